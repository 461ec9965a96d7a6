"""What a block answers for each of its transactions (SPEC §8): ExecTxResults built from the block's
verdict table."""

from __future__ import annotations

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from stepbatch.abci import transactions
from stepbatch.protocol import Code
from stepbatch.validator import BatchResult
from stepbatch.verdicts import balances_after


def verdict_lines(verdicts: pa.Table) -> list[str]:
    """Per row, its digest line without the index (SPEC §4): `ACCEPTED:61:3`, `TOO_FAST:0:`."""
    clicks = pc.fill_null(pc.cast(verdicts.column("click_number"), pa.string()), "")
    return pc.binary_join_element_wise(verdicts.column("code"), pc.cast(verdicts.column("reward_micro"), pa.string()),
                                       clicks, ":").to_pylist()


def block_tx_results(t, decoded: transactions.Decoded, result: BatchResult) -> list:
    """One ExecTxResult per transaction (SPEC §8). A one-proof (or invalid) transaction: the verdict's
    code number, its line as data, its message as log. A ProofBatch: code 0, one line per proof as
    data, the messages as a JSON array as log. Each carries an unindexed event `stepbatch.balances`:
    per proof, the account's balance in micro-STEP right after it (empty when rejected), which the
    gateway answers phones with."""
    verdicts = result.verdicts
    lines = verdict_lines(verdicts)
    messages = verdicts.column("message").to_pylist()
    codes = [int(Code[name]) for name in verdicts.column("code").to_pylist()]
    balances = [str(b) if b >= 0 else "" for b in balances_after(verdicts, result.outcome).tolist()]
    results = []
    for tx, kind in enumerate(decoded.kinds):
        rows = decoded.rows_of(tx)
        event = t.Event(type="stepbatch.balances", attributes=[
            t.EventAttribute(key="balance_micro", value=",".join(balances[rows]), index=False)])
        if kind == transactions.Kind.BATCH:
            results.append(t.ExecTxResult(code=0, data="\n".join(lines[rows]).encode(),
                                          log=orjson.dumps(messages[rows]).decode(), codespace="stepbatch",
                                          events=[event]))
        else:
            row = rows.start
            results.append(t.ExecTxResult(code=codes[row], data=lines[row].encode(), log=messages[row],
                                          codespace="stepbatch", events=[event]))
    return results
