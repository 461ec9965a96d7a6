// The phone client: one wallet, one position, the triangle it is in, the mesh around it, and the
// proofs it has sent. Everything it shows comes from the service's HTTP routes on this origin.

import "./style.css";
import { api, Offline } from "./api.js";
import { activeTriangle, sideM, watchPosition } from "./locate.js";
import { MeshMap } from "./map.js";
import { forgetRefusals, mergedHistory, rememberRefusal } from "./history.js";
import { buildPayload, distanceM, signProof, waitBeforeProof } from "./proof.js";
import * as view from "./view.js";
import { $ } from "./view.js";
import { connectInjected, createWallet, exportKey, forgetWallet, importWallet, restoreWallet } from "./wallet.js";

const REFRESH_MS = 15000;
const HISTORY_LENGTH = 20;
const state = {
  settings: {}, config: null, wallet: null, account: null, history: [], position: null, positionError: null,
  active: null, online: navigator.onLine, offlineReason: "", answer: null, busy: false, signed: null,
};
let map = null;

// Every network call goes through here: a failure to reach the validator is the offline state,
// any answer at all ends it.
async function reach(call) {
  try {
    const result = await call();
    if (!state.online) setOnline(true);
    return result;
  } catch (err) {
    if (err instanceof Offline) setOnline(false, err.message);
    throw err;
  }
}

function setOnline(online, reason = "") {
  state.online = online && navigator.onLine;
  state.offlineReason = navigator.onLine ? reason : "this phone has no network";
  view.renderConnection(state.online, state.offlineReason);
  renderHere();
}

function verdictNow() {
  const { wallet, position, active, config, busy } = state;
  if (busy) return { mineable: false, text: "Signing and sending…" };
  if (!wallet) return { mineable: false, text: "Create a wallet to start proving." };
  if (!position) return { mineable: false, text: "Waiting for your position…" };
  if (!active) return { mineable: false, text: "Finding your triangle…" };
  if (active.none) return { mineable: false, text: "No mesh here: proofs from this place are not counted." };
  if (active.info.state !== "active") return { mineable: false, text: `This triangle is ${active.info.state}.` };
  const wait = config ? waitBeforeProof(state.account?.lastProof, position, config) : { waitMs: 0 };
  if (wait.waitMs > 0) return { mineable: false, text: `Wait ${Math.ceil(wait.waitMs / 1000)} s (${wait.reason}).` };
  if (config && !(position.accuracy > 0 && position.accuracy <= config.gpsMaxAccuracyM)) {
    return { mineable: false, text: "Your GPS fix is too coarse for a proof to be accepted." };
  }
  return { mineable: true, text: "Mineable now: submit a proof to earn STEP." };
}

function renderHere() {
  view.renderPosition(state.position, state.positionError, state.config);
  view.renderTriangle(state.active, state.config);
  const verdict = verdictNow();
  view.renderMineable(verdict);
  map?.setMineable(verdict.mineable);
  $("submit").disabled = !(state.wallet && state.position && state.active && !state.active.none && state.online && !state.busy);
  return verdict;
}

// The triangle the phone is in, and the mesh around it at its level and the level above.
let meshRun = null;
function refreshMesh() {
  if (!state.position) return Promise.resolve();
  if (meshRun) return meshRun.then(refreshMesh);
  meshRun = (async () => {
    const { lat, lon } = state.position;
    const found = await reach(() => activeTriangle(lat, lon, state.active?.level));
    state.active = found ?? { none: true };
    renderHere();
    if (!found) {
      view.setText("map-status", "No triangle of the mesh covers this place.");
      return;
    }
    const level = found.level;
    const [around, coarse] = await reach(() => Promise.all([
      api.nearby(lat, lon, 2.2 * sideM(level), level),
      level > 1 ? api.nearby(lat, lon, 2.2 * sideM(level - 1), level - 1) : { triangles: [] },
    ]));
    const withLevel = (result, at) => result.triangles.map((t) => ({ ...t, level: at }));
    map.showTriangles({
      around: withLevel(around, level), coarse: withLevel(coarse, level - 1), current: found.triangleId,
      mineable: verdictNow().mineable, subdivideAt: state.config?.subdivideAtClicks ?? 11,
    });
    const existing = around.triangles.filter((t) => t.exists);
    view.setText("map-status", `Level ${level} around you: ${existing.length} triangles of the mesh, ` +
      `${existing.filter((t) => t.clicks > 0).length} clicked.`);
  })().finally(() => { meshRun = null; });
  return meshRun;
}

async function refreshAccount() {
  if (!state.wallet) return;
  const address = state.wallet.address;
  const [account, history] = await reach(() => Promise.all([api.account(address), api.history(address, HISTORY_LENGTH)]));
  if (state.wallet?.address !== address) return;
  state.account = account;
  state.history = mergedHistory(address, history.proofs, HISTORY_LENGTH);
  view.renderWallet(state.wallet, account);
  view.renderHistory(state.history, state.config);
  renderHere();
}

const quietly = (promise) => promise.catch((err) => { if (!(err instanceof Offline)) console.warn(err); });

// A refresh the validator could not answer (busy, slow, no network) is tried again after 1 s, then
// less and less often, until one succeeds.
let retryMs = 0;
let retryTimer = null;
function refreshAll() {
  return Promise.all([refreshMesh(), refreshAccount()]).then(() => {
    retryMs = 0;
  }, (err) => {
    retryMs = Math.min(REFRESH_MS, retryMs ? retryMs * 2 : 1000);
    const why = err instanceof Offline ? "offline" : `the validator did not answer: ${err.message}`;
    view.setText("map-status", `Could not refresh (${why}); trying again in ${Math.round(retryMs / 1000)} s.`);
    clearTimeout(retryTimer);
    retryTimer = setTimeout(refreshAll, retryMs);
  });
}

const refusal = (err) => ({
  ok: false, code: err instanceof Offline ? "OFFLINE" : (err.code ?? "INTERNAL"), message: err.message,
});

async function submitProof() {
  state.busy = true;
  state.answer = null;
  view.renderAnswer(null, state.config);
  renderHere();
  try {
    // The triangle is looked up again for the position of this very proof.
    try {
      await refreshMesh();
    } catch (err) {
      state.answer = refusal(err);
      view.renderAnswer(state.answer, state.config);
      return;
    }
    const { active, position, wallet } = state;
    if (!active || active.none) return;
    const signed = await signProof(wallet.signer, buildPayload(wallet.address, active.triangleId, position));
    state.signed = signed;
    view.renderSigned(signed);
    try {
      state.answer = await reach(() => api.submit(signed.proof));
    } catch (err) {
      state.answer = refusal(err);
    }
    rememberRefusal(signed.proof, state.answer);
    view.renderAnswer(state.answer, state.config);
  } finally {
    state.busy = false;
    renderHere();
  }
  await refreshAll();
}

function useWallet(wallet) {
  state.wallet = wallet;
  state.account = null;
  state.history = [];
  $("exported").hidden = true;
  view.renderWallet(wallet, null);
  view.renderHistory([], state.config);
  renderHere();
  quietly(refreshAccount());
}

function bindControls() {
  $("submit").addEventListener("click", () => quietly(submitProof()));
  $("refresh").addEventListener("click", refreshAll);
  $("create-wallet").addEventListener("click", () => useWallet(createWallet()));
  $("connect-injected").addEventListener("click", async () => {
    try {
      useWallet(await connectInjected());
    } catch (err) {
      view.setText("import-error", `The browser wallet did not connect: ${err.shortMessage ?? err.message}`);
      $("import-error").hidden = false;
    }
  });
  $("import-wallet").addEventListener("click", () => {
    try {
      useWallet(importWallet($("import-key").value));
      $("import-key").value = "";
      $("import-error").hidden = true;
    } catch (err) {
      view.setText("import-error", `Not a private key: ${err.shortMessage ?? err.message}`);
      $("import-error").hidden = false;
    }
  });
  $("export-key").addEventListener("click", () => {
    $("exported-key").value = exportKey() ?? "";
    $("exported").hidden = !$("exported").hidden;
  });
  $("copy-key").addEventListener("click", () => navigator.clipboard?.writeText($("exported-key").value));
  $("forget-wallet").addEventListener("click", () => {
    if (window.confirm("Forget this wallet? Without its exported key, its STEP are lost.")) {
      forgetRefusals(state.wallet.address);
      forgetWallet();
      useWallet(null);
    }
  });
  window.addEventListener("online", () => {
    setOnline(true);
    refreshAll();
  });
  window.addEventListener("offline", () => setOnline(false));
}

// The mesh is looked up again once the phone has moved a tenth of a triangle's side (and always
// just before a proof is signed).
function movedEnough(from, to) {
  if (!from || !state.active || state.active.none) return true;
  return distanceM(from.lat, from.lon, to.lat, to.lon) > Math.max(5, sideM(state.active.level) / 10);
}

async function start() {
  view.renderConnection(state.online, "");
  try {
    [state.settings, state.config] = await reach(() => Promise.all([api.settings(), api.proofConfig()]));
  } catch (err) {
    view.setText("map-status", `The validator cannot be reached (${err.message}); trying again in 5 s.`);
    setTimeout(start, 5000);
    return;
  }
  map = new MeshMap($("map"), state.settings);
  state.wallet = await restoreWallet();
  view.renderWallet(state.wallet, null);
  renderHere();
  quietly(refreshAccount());
  let lookedUpAt = null;
  watchPosition((position) => {
    state.position = position;
    state.positionError = null;
    map.showPosition(position);
    renderHere();
    if (movedEnough(lookedUpAt, position)) {
      lookedUpAt = position;
      refreshAll();
    }
  }, (words) => {
    state.positionError = words;
    renderHere();
  });
  // The countdown to the next mineable moment, and other phones' clicks.
  setInterval(renderHere, 1000);
  setInterval(() => {
    if (document.visibilityState === "visible" && state.online) {
      refreshAll();
    }
  }, REFRESH_MS);
}

bindControls();
start();
