// The service's HTTP routes (SPEC §7), always relative to the page's own origin, so the same page
// works in front of `stepbatch serve` and in front of a gateway to a chain.

export class Offline extends Error {}

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function call(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { cache: "no-store", ...options, headers: { accept: "application/json", ...options.headers } });
  } catch (err) {
    throw new Offline(`cannot reach the validator (${err.message})`);
  }
  let body;
  try {
    body = await response.json();
  } catch {
    throw new ApiError(response.status, "BAD_RESPONSE", `the validator answered HTTP ${response.status} without JSON`);
  }
  return { status: response.status, body, retryAfter: response.headers.get("retry-after") };
}

// The mesh and account routes answer {"ok": true, "result": …} or {"ok": false, "error": {code, message}}.
async function read(path) {
  const { status, body } = await call(path);
  if (!body.ok) throw new ApiError(status, body.error?.code, body.error?.message ?? `HTTP ${status}`);
  return body.result;
}

const query = (params) => new URLSearchParams(Object.entries(params).map(([k, v]) => [k, String(v)])).toString();

export const api = {
  settings: async () => (await call("/app/settings.json")).body,
  proofConfig: async () => {
    const { status, body } = await call("/proof/config");
    if (status !== 200) throw new ApiError(status, "BAD_RESPONSE", `/proof/config answered HTTP ${status}`);
    return body;
  },
  triangleAt: (lat, lon, level) => read(`/mesh/triangleAt?${query({ lat, lon, level })}`),
  // null when the triangle is not in the mesh (not stored, not declared, parent not subdivided).
  info: async (triangleId) => {
    try {
      return await read(`/mesh/info/${encodeURIComponent(triangleId)}`);
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) return null;
      throw err;
    }
  },
  nearby: (lat, lon, radiusM, level) =>
    read(`/mesh/nearby?${query({ lat, lon, radius_m: Math.round(radiusM), level, includePolygon: true })}`),
  account: (address) => read(`/account/${address}`),
  history: (address, limit = 20) => read(`/account/${address}/proofs?${query({ limit })}`),
  // The original server's answer, accepted or not: {ok, reward, balance, …} or {ok: false, code, message}.
  submit: async (proof) => {
    const answer = await call("/proof/submit", {
      method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(proof),
    });
    return { ...answer.body, status: answer.status, retryAfter: answer.retryAfter };
  },
};
