-- name: trace-effects
-- description: Causal tracing (kevo trace): average indirect effect (AIE, the mean over samples of p_restored - p_corrupt) by trace run, kind, layer and ROME's token group.
-- tables: traces, trace_runs
-- include: trace_run
-- The definitions (token groups, windows, what is restored): docs/tracing.md.
-- A group that holds several positions of one sample (middle constraint tokens, further tokens, a
-- patch group's image tokens) is averaged within the sample first, as ROME does.
WITH t AS (
    SELECT r.name, t.sample_id, t.kind, t.layer, t.token_group, t.effect, t.p_restored, r.p_corrupt, r.p_clean
    FROM traces t JOIN trace_runs r ON r.trace_id = t.trace_id
    WHERE $trace_run = '' OR r.name = $trace_run
),
per_sample AS (
    SELECT name, sample_id, kind, layer, token_group, AVG(effect) AS effect, AVG(p_restored) AS p_restored,
           MAX(p_corrupt) AS p_corrupt, MAX(p_clean) AS p_clean  -- one value per sample
    FROM t GROUP BY name, sample_id, kind, layer, token_group
)
SELECT name, kind, layer, token_group, COUNT(*) AS n_samples, AVG(effect) AS aie, AVG(p_restored) AS p_restored,
       AVG(p_corrupt) AS p_corrupt, AVG(p_clean) AS p_clean
FROM per_sample
GROUP BY name, kind, layer, token_group
ORDER BY name, kind, layer,
         CASE token_group WHEN 'before' THEN 0 WHEN 'first_corrupted' THEN 1 WHEN 'middle_corrupted' THEN 2
                          WHEN 'last_corrupted' THEN 3 WHEN 'first_subsequent' THEN 4 WHEN 'further' THEN 5
                          ELSE 6 END
