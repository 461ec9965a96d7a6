// STEP-PROOF-v1 as the phone builds and signs it (SPEC §2).
//
// N(x) of the canonical message is ECMAScript's Number.prototype.toString, so in the page String(x)
// is the definition itself, not an imitation of it: 5, -180, 1e-7, 1e+21, and -0 becomes "0".
// JSON.stringify writes the same digits, so the validator parses back the very doubles signed here.

export const PROOF_VERSION = "STEP-PROOF-v1";

export function canonicalMessage(payload) {
  return [
    PROOF_VERSION,
    `account:${payload.account.toLowerCase()}`,
    `triangle:${payload.triangleId}`,
    `lat:${String(payload.lat)}`,
    `lon:${String(payload.lon)}`,
    `acc:${String(payload.accuracy)}`,
    `ts:${payload.timestamp}`,
    `nonce:${payload.nonce}`,
  ].join("|");
}

// 128 random bits: an (account, nonce) pair is used once, ever.
export function newNonce() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export function buildPayload(account, triangleId, position, now = new Date()) {
  return {
    version: PROOF_VERSION,
    account: account.toLowerCase(),
    triangleId,
    lat: position.lat,
    lon: position.lon,
    accuracy: position.accuracy,
    timestamp: now.toISOString(),
    nonce: newNonce(),
  };
}

// `wallet.signMessage` is EIP-191 personal_sign, for a key kept in the page and an injected wallet alike.
export async function signProof(wallet, payload) {
  const message = canonicalMessage(payload);
  const signature = await wallet.signMessage(message);
  return { proof: { payload, signature }, message };
}

const EARTH_RADIUS_M = 6371000;

// Metres between two points (haversine, R = 6371000 m as the validator's speed gate uses).
export function distanceM(lat1, lon1, lat2, lon2) {
  const rad = Math.PI / 180;
  const dLat = (lat2 - lat1) * rad;
  const dLon = (lon2 - lon1) * rad;
  const h = Math.sin(dLat / 2) ** 2 + Math.cos(lat1 * rad) * Math.cos(lat2 * rad) * Math.sin(dLon / 2) ** 2;
  return 2 * EARTH_RADIUS_M * Math.asin(Math.min(1, Math.sqrt(h)));
}

// How long the account must still wait before a proof from `position` can be accepted (ms, 0 when
// it need not), and why: the moratorium since its last accepted proof, or the speed limit for the
// distance from it.
export function waitBeforeProof(lastProof, position, config, now = Date.now()) {
  if (!lastProof) return { waitMs: 0, reason: null };
  const sinceMs = now - Date.parse(lastProof.timestamp);
  const travelMs = (distanceM(lastProof.lat, lastProof.lon, position.lat, position.lon) / config.speedLimitMps) * 1000;
  const moratoriumWait = config.moratoriumMs - sinceMs;
  const speedWait = Math.ceil(travelMs) - sinceMs;
  if (moratoriumWait <= 0 && speedWait <= 0) return { waitMs: 0, reason: null };
  return moratoriumWait >= speedWait
    ? { waitMs: moratoriumWait, reason: `${config.moratoriumMs / 1000} s between proofs` }
    : { waitMs: speedWait, reason: `at most ${config.speedLimitMps} m/s since your last proof` };
}
