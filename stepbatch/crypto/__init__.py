"""The cryptography of STEP proofs (SPEC §2, §6): canonical message, EIP-191 signing and recovery.

The public API is the four names below. The batch engine uses the column functions of the modules
behind them: `eip191` (messages and keccak hashing), `hexcodec` (signatures and accounts as bytes),
`recovery` (libsecp256k1 recovery on all cores), `signing` (wallet-style signatures, for `gen`),
`secp256k1` (the one module that talks to coincurve) and `ecmascript` (JavaScript number text).
"""

from stepbatch.crypto.eip191 import canonical_message
from stepbatch.crypto.recovery import recover_address, recover_addresses
from stepbatch.crypto.signing import sign_proof

__all__ = ["canonical_message", "sign_proof", "recover_address", "recover_addresses"]
