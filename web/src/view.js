// Putting the page's state on screen. Text goes in with textContent only: messages come from the
// network and are never parsed as HTML.

import { inWords, STATE_WORDS } from "./words.js";

export const $ = (id) => document.getElementById(id);

export function show(id, visible) {
  $(id).hidden = !visible;
}

export function setText(id, text) {
  const element = $(id);
  if (element.textContent !== text) element.textContent = text;
}

// "STEP-TRI-v1:F14-0123012301230000000-W7Q" → "F14-0123012301230-W7Q": the path's padding left out.
export function shortId(triangleId) {
  const parts = /^STEP-TRI-v1:([A-T])([0-9]+)-([0-9]{20})-([A-Z2-7]{3})$/.exec(triangleId ?? "");
  if (!parts) return triangleId ?? "";
  const [, face, level, path, check] = parts;
  return `${face}${level}-${path.slice(0, Number(level) - 1) || "0"}-${check}`;
}

const time = (iso) => new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });

export function renderConnection(online, reason) {
  setText("connection", online ? "online" : "offline");
  $("connection").className = `pill ${online ? "ok" : "bad"}`;
  show("offline", !online);
  setText("offline", online ? "" : `Offline: ${reason || "no network"}. Nothing is sent until the validator can be reached again.`);
}

export function renderPosition(position, error, config) {
  if (!position) {
    setText("position", error || "Locating…");
    show("accuracy-warning", false);
    return;
  }
  setText("position", `${position.lat.toFixed(6)}, ${position.lon.toFixed(6)} · accuracy ${Math.round(position.accuracy)} m`);
  const tooCoarse = config && !(position.accuracy > 0 && position.accuracy <= config.gpsMaxAccuracyM);
  show("accuracy-warning", Boolean(tooCoarse));
  if (tooCoarse) {
    setText("accuracy-warning", `GPS accuracy is ${Math.round(position.accuracy)} m; the validator accepts ` +
      `${config.gpsMaxAccuracyM} m or better, so a proof now would be refused. Move to open sky and wait for a better fix.`);
  }
}

export function renderTriangle(active, config) {
  if (!active) {
    for (const id of ["triangle-id", "triangle-level", "triangle-clicks", "triangle-state"]) setText(id, "…");
    return;
  }
  if (active.none) {
    setText("triangle-id", "none: no mesh covers this place");
    for (const id of ["triangle-level", "triangle-clicks", "triangle-state"]) setText(id, "–");
    return;
  }
  setText("triangle-id", shortId(active.triangleId));
  $("triangle-id").title = active.triangleId;
  $("triangle-id").dataset.triangleId = active.triangleId;
  setText("triangle-level", String(active.level));
  setText("triangle-clicks", `${active.info.clicks} of ${config?.subdivideAtClicks ?? 11}`);
  setText("triangle-state", STATE_WORDS[active.info.state] ?? active.info.state);
}

export function renderMineable(verdict) {
  setText("mineable", verdict.text);
  $("mineable").className = `status ${verdict.mineable ? "ok" : "wait"}`;
  $("mineable").dataset.mineable = String(verdict.mineable);
}

export function renderAnswer(answer, config) {
  show("answer", Boolean(answer));
  if (!answer) return;
  $("answer").className = `card answer ${answer.ok ? "accepted" : "refused"}`;
  $("answer").dataset.code = answer.ok ? "ACCEPTED" : answer.code;
  if (answer.ok) {
    setText("answer-title", `Accepted: +${answer.reward} STEP`);
    setText("answer-detail", `Click ${answer.clicks} on triangle ${shortId(answer.triangleId)} (level ${answer.level}). ` +
      `Balance ${answer.balance} STEP.`);
    return;
  }
  setText("answer-title", inWords(answer.code, config));
  const retry = answer.retryAfter ? ` Retry in ${answer.retryAfter} s.` : "";
  setText("answer-detail", `${answer.code}: ${answer.message ?? ""}${retry}`);
}

export function renderWallet(wallet, account) {
  show("no-wallet", !wallet);
  show("has-wallet", Boolean(wallet));
  show("connect-injected", typeof window.ethereum?.request === "function");
  if (!wallet) return;
  setText("address", wallet.address);
  setText("wallet-kind", wallet.kind === "local" ? "key kept in this browser" : "browser wallet");
  show("export-key", wallet.kind === "local");
  setText("balance", account ? account.balance : "…");
  setText("proof-count", account ? String(account.proofCount) : "0");
}

export function renderHistory(proofs, config) {
  show("history-empty", proofs.length === 0);
  const items = proofs.map((proof) => {
    const item = document.createElement("li");
    item.dataset.code = proof.code;
    item.className = proof.accepted ? "accepted" : "refused";
    const head = document.createElement("div");
    const code = document.createElement("span");
    code.className = "code";
    code.textContent = proof.code;
    head.append(code, ` ${time(proof.timestamp)} · ${shortId(proof.triangleId)}`);
    const detail = document.createElement("div");
    detail.className = "detail";
    detail.textContent = proof.accepted
      ? `+${proof.reward} STEP · click ${proof.clickNumber}`
      : `${inWords(proof.code, config)} ${proof.message}${proof.onlyHere ? " (kept on this phone only)" : ""}`;
    item.append(head, detail);
    return item;
  });
  $("history").replaceChildren(...items);
}

export function renderSigned(signed) {
  setText("signed-message", signed ? signed.message : "");
  setText("signed-proof", signed ? JSON.stringify(signed.proof, null, 1) : "");
}
