// The wallet that signs proofs: a key generated and kept in this browser (localStorage, never sent
// anywhere; the page's Content-Security-Policy allows connections to its own origin only), or an
// injected EIP-1193 wallet, which keeps its key itself and signs with personal_sign.

import { BrowserProvider, Wallet, hexlify, randomBytes } from "ethers";

const KEY_ITEM = "stepbatch.wallet.privateKey";
const KIND_ITEM = "stepbatch.wallet.kind";

function local(privateKey) {
  const signer = new Wallet(privateKey);
  return { kind: "local", signer, address: signer.address.toLowerCase() };
}

// ethers' listAccounts gives one signer per account the wallet has connected to this page.
function injected(signers) {
  return { kind: "injected", signer: signers[0], address: signers[0].address.toLowerCase() };
}

export const injectedAvailable = () => typeof window.ethereum?.request === "function";

// The wallet this browser used last time; an injected one only if it is still connected (no prompt).
export async function restoreWallet() {
  if (localStorage.getItem(KIND_ITEM) === "injected" && injectedAvailable()) {
    const provider = new BrowserProvider(window.ethereum);
    const accounts = await provider.listAccounts();
    if (accounts.length) return injected(accounts);
  }
  const key = localStorage.getItem(KEY_ITEM);
  return key ? local(key) : null;
}

export function createWallet() {
  const privateKey = hexlify(randomBytes(32));
  localStorage.setItem(KEY_ITEM, privateKey);
  localStorage.setItem(KIND_ITEM, "local");
  return local(privateKey);
}

// Throws (ethers' own message) when the text is not a 32-byte hex private key.
export function importWallet(text) {
  const wallet = local(text.trim());
  localStorage.setItem(KEY_ITEM, wallet.signer.privateKey);
  localStorage.setItem(KIND_ITEM, "local");
  return wallet;
}

export async function connectInjected() {
  const provider = new BrowserProvider(window.ethereum);
  await provider.send("eth_requestAccounts", []);
  const wallet = injected(await provider.listAccounts());
  localStorage.setItem(KIND_ITEM, "injected");
  return wallet;
}

export const exportKey = () => localStorage.getItem(KEY_ITEM);

export function forgetWallet() {
  localStorage.removeItem(KEY_ITEM);
  localStorage.removeItem(KIND_ITEM);
}
