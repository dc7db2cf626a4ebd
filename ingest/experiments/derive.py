"""The skip experiments' layer ranges, derived from a baseline store by SQL (docs/experiments.md).

- critical layer c: the mode of the paper's critical-layer distribution (generated tokens, the
  named query ``critical-layer-distribution`` with the given tau and lens; ties go to the lower layer);
- mutation layers [m1, m2]: the interquartile range of the mutation layers (named query
  ``mutation-events``) of object tokens, or of all generated tokens when fewer than ``min_tokens``
  object tokens have an event. Quartiles are DuckDB's ``quantile_disc``: the ceil(q * n)-th smallest
  of the n mutation layers (a layer that occurs, never an interpolation).

Each number comes from one SQL text: the named query's bound SQL (``kevo query NAME --show-sql``)
wrapped in a SELECT, written to ``DIR/derivation/*.sql`` and run with ``kevo sql BASE FILE``. The
texts are printed and recorded, and run unchanged in a DuckDB shell on the same store.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from .command import ExperimentError, Kevo

# (the comment goes after SELECT: a text starting with '--' would read as an option to `kevo sql`)
CRITICAL_SQL = """SELECT  -- the paper's critical layer c: the mode of the critical-layer distribution (ties: lower)
       layer AS critical_layer, n_critical, n_tokens
FROM (
{inner}
) distribution
WHERE layer IS NOT NULL
ORDER BY n_critical DESC, layer
LIMIT 1
"""

MUTATION_SQL = """SELECT  -- mutation layers [m1, m2]: interquartile range of mutation layers ({which})
       COUNT(*) AS n_events, COUNT(DISTINCT token_uid) AS n_tokens,
       quantile_disc(mutation_layer, 0.25) AS m1, quantile_disc(mutation_layer, 0.75) AS m2
FROM (
{inner}
) events
{where}
"""

TOKENS_SQL = "SELECT COUNT(*) AS n_tokens FROM tokens WHERE role = 'generated'\n"


@dataclass
class Derivation:
    critical_layer: int
    m1: int
    m2: int
    n_layers: int
    n_generated_tokens: int
    n_critical_tokens: int
    mutation_tokens: str  # 'object' | 'all'
    n_mutation_events: int
    n_mutation_tokens: int
    sql: dict  # name -> the SQL text that produced it

    def as_dict(self) -> dict:
        return asdict(self)


def _bound(kevo: Kevo, name: str, params: dict) -> str:
    args = ["query", name, "--show-sql"]
    for k, v in params.items():
        args += ["-p", f"{k}={v}"]
    return kevo(*args).strip().rstrip(";").rstrip()


def _run(kevo: Kevo, store: str, sql: str, path: Path) -> list[dict]:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(sql, encoding="utf-8")
    return kevo.json("sql", store, path, "--format", "json")


def derive_ranges(kevo: Kevo, store: str, n_layers: int, out: Path, *, tau: float | None = None,
                  lens: str | None = None,
                  min_tokens: int = 20, min_mutation_tokens: int = 5, echo=print) -> Derivation:
    """c, m1, m2 from the store's own data; refuses (saying what it needed and had) a store too small.
    ``tau`` and ``lens`` default to the named queries' own defaults."""
    tau, lens = kevo.defaults("critical-layer-distribution", {"tau": tau, "lens": lens}).values()
    d = Path(out) / "derivation"
    n_gen = int(_run(kevo, store, TOKENS_SQL, d / "generated_tokens.sql")[0]["n_tokens"])
    crit_sql = CRITICAL_SQL.format(inner=_bound(kevo, "critical-layer-distribution", {"tau": tau, "lens": lens}))
    rows = _run(kevo, store, crit_sql, d / "critical_layer.sql")
    n_crit = 0
    if rows:
        full = _run(kevo, store, crit_sql.replace("LIMIT 1", ""), d / "critical_layer_distribution.sql")
        n_crit = sum(int(r["n_critical"]) for r in full)
    if n_gen < min_tokens or not rows or n_crit < min_tokens:
        raise ExperimentError(
            f"baseline {store} is too small to derive the critical layer: it needs at least {min_tokens} generated "
            f"tokens with a critical layer (top-1 p >= tau={tau}), it has {n_crit} (of {n_gen} generated tokens)")
    c = int(rows[0]["critical_layer"])
    echo(f"critical layer c = {c} (mode: {rows[0]['n_critical']} of {rows[0]['n_tokens']} generated tokens)")

    inner = _bound(kevo, "mutation-events", {"tau": tau, "lens": lens})
    obj_sql = MUTATION_SQL.format(inner=inner, which="object tokens", where="WHERE object IS NOT NULL")
    m = _run(kevo, store, obj_sql, d / "mutation_layers.sql")[0]
    which, sql = "object", obj_sql
    if int(m["n_tokens"]) < min_mutation_tokens:
        n_obj = int(m["n_tokens"])
        all_sql = MUTATION_SQL.format(inner=inner, which="all generated tokens: too few object tokens", where="")
        m = _run(kevo, store, all_sql, d / "mutation_layers_all_tokens.sql")[0]
        which, sql = "all", all_sql
        echo(f"only {n_obj} object tokens have a mutation event (fewer than {min_mutation_tokens}): "
             "the mutation layers come from all generated tokens")
        if int(m["n_tokens"]) < min_mutation_tokens:
            raise ExperimentError(
                f"baseline {store} is too small to derive the mutation layers: it needs at least {min_mutation_tokens} "
                f"tokens with a mutation event, it has {m['n_tokens']} (of {n_gen} generated tokens; "
                f"{n_obj} of them object tokens)")
    m1, m2 = int(m["m1"]), int(m["m2"])
    echo(f"mutation layers [m1, m2] = [{m1}, {m2}] (IQR of {m['n_events']} mutation events on {m['n_tokens']} "
         f"{'object' if which == 'object' else 'generated'} tokens)")
    return Derivation(critical_layer=c, m1=m1, m2=m2, n_layers=n_layers, n_generated_tokens=n_gen,
                      n_critical_tokens=n_crit, mutation_tokens=which, n_mutation_events=int(m["n_events"]),
                      n_mutation_tokens=int(m["n_tokens"]),
                      sql={"critical_layer": crit_sql, "mutation_layers": sql, "generated_tokens": TOKENS_SQL})


def variant_ranges(d: Derivation, keep_last: int = 2) -> dict[str, tuple[list[int], str]]:
    """{name: (decoder layers to skip, how)}, the decoder layers in ``--skip-layers`` numbering (0-based).

    c, m1 and m2 are hidden-state layers (the ``layers`` table: 0 = the embeddings, h = the output of
    decoder layer h - 1), so each variant removes the decoder layers that *produce* a range of hidden
    states: skip.1 those after the critical layer and before the first mutation layer (c < h < m1),
    skip.2 the mutation layers (m1 <= h <= m2), skip.3 those after the critical layer up to the last
    k (c < h <= L - k). skip.1 and skip.2 together are c < h <= m2, without overlap."""
    c, m1, m2, L = d.critical_layer, d.m1, d.m2, d.n_layers
    return {
        "skip.1": (list(range(c, m1 - 1)), f"(c, m1) = ({c}, {m1})"),
        "skip.2": (list(range(max(m1, 1) - 1, m2)), f"[m1, m2] = [{m1}, {m2}]"),
        "skip.3": (list(range(c, L - keep_last)), f"(c, L-k] = ({c}, {L}-{keep_last}]"),
    }
