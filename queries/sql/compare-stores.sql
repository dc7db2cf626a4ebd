-- name: compare-stores
-- description: Two stores (a = baseline, b = variant, e.g. a skip experiment or LVLM vs LLM): token agreement by sample and step, hallucination and metric deltas.
-- The definitions: docs/analyses.md, "Skip experiments".
-- stores: 2
-- include: lens
WITH ta AS (
    SELECT s.sample_key, t.label
    FROM a.tokens t JOIN a.samples s ON s.sample_id = t.sample_id WHERE t.role = 'generated'
),
tb AS (
    SELECT s.sample_key, t.label
    FROM b.tokens t JOIN b.samples s ON s.sample_id = t.sample_id WHERE t.role = 'generated'
),
-- include: identical_prefix
len_a AS (SELECT sample_key, COUNT(*) AS n FROM ta GROUP BY sample_key),
len_b AS (SELECT sample_key, COUNT(*) AS n FROM tb GROUP BY sample_key),
l_a AS (SELECT token_uid, layer, top1_prob, p_out, rank_out FROM a.layers WHERE lens = $lens),
l_b AS (SELECT token_uid, layer, top1_prob, p_out, rank_out FROM b.layers WHERE lens = $lens),
-- include: critical_layer as a
-- include: critical_layer as b
crit_pairs AS (
    SELECT AVG(ca.critical_layer) AS critical_layer_mean_a, AVG(cb.critical_layer) AS critical_layer_mean_b,
           COUNT(*) AS n_prefix_tokens
    FROM prefix x JOIN crit_a ca ON ca.token_uid = x.uid_a JOIN crit_b cb ON cb.token_uid = x.uid_b
),
hall AS (
    SELECT (SELECT CAST(SUM(CASE WHEN label = 'hallucinated' THEN 1 ELSE 0 END) AS DOUBLE) / NULLIF(SUM(CASE WHEN label IS NOT NULL THEN 1 ELSE 0 END), 0) FROM ta) AS hallucinated_rate_a,
           (SELECT CAST(SUM(CASE WHEN label = 'hallucinated' THEN 1 ELSE 0 END) AS DOUBLE) / NULLIF(SUM(CASE WHEN label IS NOT NULL THEN 1 ELSE 0 END), 0) FROM tb) AS hallucinated_rate_b
),
samples_cmp AS (
    SELECT COUNT(*) AS n_samples_both,
           SUM(CASE WHEN q.first_diff_step IS NULL AND la.n = lb.n THEN 1 ELSE 0 END) AS n_identical_responses,
           AVG(q.first_diff_step) AS first_diff_step_mean,
           SUM(q.n_pairs) AS n_token_pairs, SUM(q.n_same) AS n_same_tokens
    FROM per_sample q JOIN len_a la ON la.sample_key = q.sample_key JOIN len_b lb ON lb.sample_key = q.sample_key
)
SELECT (SELECT COUNT(*) FROM a.samples) AS n_samples_a, (SELECT COUNT(*) FROM b.samples) AS n_samples_b,
       sc.n_samples_both, sc.n_identical_responses,
       CAST(sc.n_identical_responses AS DOUBLE) / NULLIF(sc.n_samples_both, 0) AS response_agreement,
       sc.n_token_pairs, sc.n_same_tokens,
       CAST(sc.n_same_tokens AS DOUBLE) / NULLIF(sc.n_token_pairs, 0) AS token_agreement,
       sc.first_diff_step_mean,
       cp.n_prefix_tokens, cp.critical_layer_mean_a, cp.critical_layer_mean_b,
       cp.critical_layer_mean_b - cp.critical_layer_mean_a AS critical_layer_delta,
       h.hallucinated_rate_a, h.hallucinated_rate_b, h.hallucinated_rate_b - h.hallucinated_rate_a AS hallucinated_rate_delta
FROM samples_cmp sc CROSS JOIN crit_pairs cp CROSS JOIN hall h
