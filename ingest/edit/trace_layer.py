"""The MLP block a trace points to: the one with the largest average indirect effect.

Per traced sample, an MLP block's effect is its largest ``effect`` over the restored positions; the
block chosen has the largest mean of that over the samples (ties: the earlier block).
"""

from __future__ import annotations

from kevo_store import open_store
from kevo_store.errors import KevoError

SQL = """
SELECT layer, avg(best) AS aie, count(*) AS n_samples
FROM (SELECT sample_id, layer, max(effect) AS best FROM traces WHERE kind = 'mlp' GROUP BY sample_id, layer)
GROUP BY layer ORDER BY aie DESC, layer ASC LIMIT 1
"""


def layer_from_trace(store: str) -> int:
    s = open_store(store)
    if "traces" not in s.tables:
        raise KevoError(f"--from-trace {store}: the store has no traces (run `kevo trace {store} --kinds mlp` first)")
    rows = s.sql(SQL)
    if rows.height == 0:
        raise KevoError(f"--from-trace {store}: the traces table has no 'mlp' rows (trace with --kinds mlp)")
    return int(rows["layer"][0])
