-- name: trace-peaks
-- description: Causal tracing: per kind, the layer where the indirect effect peaks, per sample (the cell with the largest effect) or over the dataset (the layer of the largest AIE).
-- tables: traces, trace_runs
-- include: trace_run
-- The definitions: docs/tracing.md.
-- param per: str = 'sample' in (sample, dataset)  -- one row per (run, sample, kind), or per (run, kind)
-- param token_group: str = ''      -- only positions of this ROME token group (e.g. last_corrupted); '' = all
WITH t AS (
    SELECT r.name, t.sample_id, t.kind, t.layer, t.position, t.token_group, t.effect, t.p_restored, r.p_corrupt,
           r.p_clean
    FROM traces t JOIN trace_runs r ON r.trace_id = t.trace_id
    WHERE ($trace_run = '' OR r.name = $trace_run) AND ($token_group = '' OR t.token_group = $token_group)
),
per_sample AS (
    SELECT name, sample_id, kind, ARG_MAX(layer, effect) AS peak_layer, ARG_MAX(position, effect) AS peak_position,
           ARG_MAX(token_group, effect) AS peak_token_group, MAX(effect) AS peak_effect,
           ANY_VALUE(p_corrupt) AS p_corrupt, ANY_VALUE(p_clean) AS p_clean
    FROM t GROUP BY name, sample_id, kind
),
by_layer AS (  -- per sample, the best position at each layer; then the mean over samples
    SELECT name, kind, layer, AVG(best) AS aie, COUNT(*) AS n_samples
    FROM (SELECT name, sample_id, kind, layer, MAX(effect) AS best FROM t GROUP BY name, sample_id, kind, layer) x
    GROUP BY name, kind, layer
),
dataset AS (
    SELECT name, kind, ARG_MAX(layer, aie) AS peak_layer, MAX(aie) AS peak_aie, ANY_VALUE(n_samples) AS n_samples
    FROM by_layer GROUP BY name, kind
)
SELECT name, NULL::BIGINT AS sample_id, kind, peak_layer, NULL::INTEGER AS peak_position,
       NULL::VARCHAR AS peak_token_group, peak_aie AS peak_effect, n_samples
FROM dataset WHERE $per = 'dataset'
UNION ALL
SELECT name, sample_id, kind, peak_layer, peak_position, peak_token_group, peak_effect, 1 AS n_samples
FROM per_sample WHERE $per = 'sample'
ORDER BY name, kind, sample_id NULLS FIRST
