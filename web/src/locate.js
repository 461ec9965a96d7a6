// Where the phone is, and which triangle a proof from there would be counted in.

import { api } from "./api.js";

export const MAX_LEVEL = 21;

// Side of a level-L triangle in metres, as the service estimates it.
export const sideM = (level) => 8_000_000 / 2 ** (level - 1);

// Calls `onPosition({lat, lon, accuracy, at})` on every fix and `onError(words)` when there is none.
export function watchPosition(onPosition, onError) {
  if (!window.isSecureContext) {
    onError("The browser gives a location only to pages served over HTTPS (or from localhost).");
    return () => {};
  }
  if (!navigator.geolocation) {
    onError("This browser has no location service.");
    return () => {};
  }
  const words = {
    1: "Location permission was refused: STEP needs your position to prove where you are.",
    2: "Your position is unavailable right now (no GPS fix).",
    3: "Finding your position is taking long; still trying.",
  };
  const id = navigator.geolocation.watchPosition(
    (fix) => onPosition({
      lat: fix.coords.latitude, lon: fix.coords.longitude, accuracy: fix.coords.accuracy, at: fix.timestamp,
    }),
    (err) => onError(words[err.code] ?? err.message),
    { enableHighAccuracy: true, maximumAge: 5000, timeout: 30000 },
  );
  return () => navigator.geolocation.clearWatch(id);
}

async function probe(lat, lon, level) {
  const at = await api.triangleAt(lat, lon, level);
  return { triangleId: at.triangleId, level, info: await api.info(at.triangleId) };
}

// The triangle a proof at (lat, lon) would be counted in: the finest one of the mesh that contains
// the point (a subdivided triangle's children exist, so the finest is never the subdivided one).
// `hintLevel` is where it was last time: usually two probes settle it; otherwise every level is
// probed at once. `null` when no level of the mesh covers the point.
export async function activeTriangle(lat, lon, hintLevel) {
  let best = hintLevel ? await probe(lat, lon, hintLevel) : null;
  if (!best?.info) {
    const levels = Array.from({ length: MAX_LEVEL }, (_, k) => k + 1);
    const found = (await Promise.all(levels.map((level) => probe(lat, lon, level)))).filter((p) => p.info);
    return found.length ? found[found.length - 1] : null;
  }
  while (best.level < MAX_LEVEL) {
    const finer = await probe(lat, lon, best.level + 1);
    if (!finer.info) break;
    best = finer;
  }
  return best;
}
