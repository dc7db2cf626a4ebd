-- name: trace-compare
-- description: Causal tracing in two stores side by side (e.g. an LVLM and its LLM run text-only on the same questions): AIE by kind, layer and token group in a and b, and b - a.
-- The definitions: docs/tracing.md.
-- stores: 2
-- tables: traces, trace_runs
-- param name_a: str = ''  -- trace run in store a; '' = every run of a
-- param name_b: str = ''  -- trace run in store b; '' = every run of b
WITH ea AS (
    SELECT kind, layer, token_group, AVG(effect) AS aie, COUNT(DISTINCT sample_id) AS n_samples
    FROM (SELECT r.sample_id, t.kind, t.layer, t.token_group, AVG(t.effect) AS effect
          FROM a.traces t JOIN a.trace_runs r ON r.trace_id = t.trace_id
          WHERE $name_a = '' OR r.name = $name_a
          GROUP BY r.trace_id, r.sample_id, t.kind, t.layer, t.token_group) x
    GROUP BY kind, layer, token_group
),
eb AS (
    SELECT kind, layer, token_group, AVG(effect) AS aie, COUNT(DISTINCT sample_id) AS n_samples
    FROM (SELECT r.sample_id, t.kind, t.layer, t.token_group, AVG(t.effect) AS effect
          FROM b.traces t JOIN b.trace_runs r ON r.trace_id = t.trace_id
          WHERE $name_b = '' OR r.name = $name_b
          GROUP BY r.trace_id, r.sample_id, t.kind, t.layer, t.token_group) x
    GROUP BY kind, layer, token_group
)
SELECT COALESCE(ea.kind, eb.kind) AS kind, COALESCE(ea.layer, eb.layer) AS layer,
       COALESCE(ea.token_group, eb.token_group) AS token_group,
       ea.aie AS aie_a, eb.aie AS aie_b, eb.aie - ea.aie AS aie_diff, ea.n_samples AS n_a, eb.n_samples AS n_b
FROM ea FULL OUTER JOIN eb ON ea.kind = eb.kind AND ea.layer = eb.layer AND ea.token_group = eb.token_group
ORDER BY kind, layer, token_group
