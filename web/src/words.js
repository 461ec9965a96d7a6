// Every answer the validator can give, in words a person holding the phone understands (SPEC §4 and
// the service's own refusals). The validator's message, with its numbers, is shown beneath.

export const VERDICT_WORDS = {
  ACCEPTED: "Accepted: your proof was counted.",
  INVALID_PAYLOAD: "The proof was malformed, so the validator could not read it.",
  UNSUPPORTED_VERSION: "This proof format is not supported by the validator.",
  LOW_GPS_ACCURACY: "Your GPS fix is not precise enough. Move to open sky and wait for a better fix.",
  CLOCK_DRIFT: "Your phone's clock is too far from the validator's. Set the time automatically and try again.",
  BAD_SIGNATURE: "The signature does not match this wallet, so the proof was refused.",
  NONCE_REPLAY: "This exact proof was already sent once; a proof is counted only once.",
  TRIANGLE_NOT_FOUND: "There is no mesh here: this triangle is not part of the mined area.",
  TRIANGLE_NOT_ACTIVE: "This triangle has been subdivided or exhausted; prove in the smaller triangle you are in now.",
  OUT_OF_BOUNDS: "Your position is not inside the triangle the proof names.",
  TOO_FAST: "You moved faster than a person can walk since your last proof. Wait a little and try again.",
  MORATORIUM: "Too soon: wait 10 seconds between proofs.",
  RATE_LIMITED: "Too many requests from this phone; wait a moment.",
  OVERLOADED: "The validator is busy right now; try again in a moment.",
  SHUTTING_DOWN: "The validator is restarting; try again in a moment.",
  UNAVAILABLE: "The validator did not answer in time; nothing was sent. Try again in a moment.",
  INTERNAL: "The validator failed to record the proof; nothing was counted. Try again.",
  OFFLINE: "You are offline: the proof was not sent.",
};

export function inWords(code, config) {
  if (code === "MORATORIUM" && config) {
    return `Too soon: wait ${config.moratoriumMs / 1000} seconds between proofs.`;
  }
  return VERDICT_WORDS[code] ?? `The validator refused the proof (${code}).`;
}

export const STATE_WORDS = {
  active: "active",
  subdivided: "subdivided into 4 smaller triangles",
  exhausted: "exhausted (finest level reached)",
};
