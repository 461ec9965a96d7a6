// The proof history the page shows: the validator's (GET /account/…/proofs) and, beside it, the
// refusals the validator keeps in no account's history. It files a proof under an account only
// once its signature recovered to that account, so a refusal given before that check (a malformed
// proof, a coarse GPS fix, clock drift, a bad signature), or one given before the proof reached a
// batch (rate limit, overload, no network), is remembered here, on this phone only.

const LOCAL_CODES = new Set([
  "INVALID_PAYLOAD", "UNSUPPORTED_VERSION", "LOW_GPS_ACCURACY", "CLOCK_DRIFT", "BAD_SIGNATURE",
  "RATE_LIMITED", "OVERLOADED", "SHUTTING_DOWN", "INTERNAL", "OFFLINE",
]);
const KEPT = 50;
const item = (address) => `stepbatch.refusals.${address}`;

function localRefusals(address) {
  try {
    return JSON.parse(localStorage.getItem(item(address)) ?? "[]");
  } catch {
    return [];
  }
}

// Remembers the validator's answer to `proof` when it is a refusal the validator does not keep.
export function rememberRefusal(proof, answer) {
  if (answer.ok || !LOCAL_CODES.has(answer.code)) return;
  const { account, triangleId, nonce, timestamp, lat, lon } = proof.payload;
  const refusals = localRefusals(account);
  refusals.unshift({
    code: answer.code, message: answer.message ?? "", triangleId, nonce, timestamp, lat, lon,
    accepted: false, onlyHere: true,
  });
  localStorage.setItem(item(account), JSON.stringify(refusals.slice(0, KEPT)));
}

// The validator's history and this phone's own refusals, newest first.
export function mergedHistory(address, proofs, limit) {
  const known = new Set(proofs.map((proof) => proof.nonce));
  const local = localRefusals(address).filter((refusal) => !known.has(refusal.nonce));
  return [...proofs, ...local]
    .sort((a, b) => Date.parse(b.timestamp) - Date.parse(a.timestamp))
    .slice(0, limit);
}

export function forgetRefusals(address) {
  localStorage.removeItem(item(address));
}
