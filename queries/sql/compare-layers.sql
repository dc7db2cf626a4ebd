-- name: compare-layers
-- description: Two stores, per layer, over tokens with an identical prefix in both: top-1 agreement and the deltas (b - a) of p_out, js_prev, entropy.
-- The definitions: docs/analyses.md, "Skip experiments".
-- stores: 2
-- include: lens
WITH
-- include: identical_prefix
la AS (SELECT token_uid, layer, top1_id, p_out, js_prev, entropy FROM a.layers WHERE lens = $lens),
lb AS (SELECT token_uid, layer, top1_id, p_out, js_prev, entropy FROM b.layers WHERE lens = $lens)
SELECT la.layer, COUNT(*) AS n_tokens,
       AVG(CASE WHEN la.top1_id = lb.top1_id THEN 1.0 ELSE 0.0 END) AS top1_agreement,
       AVG(la.p_out) AS p_out_mean_a, AVG(lb.p_out) AS p_out_mean_b, AVG(lb.p_out - la.p_out) AS p_out_delta,
       AVG(ABS(lb.p_out - la.p_out)) AS p_out_abs_delta,
       MEDIAN(la.js_prev) AS js_prev_median_a, MEDIAN(lb.js_prev) AS js_prev_median_b,
       AVG(lb.js_prev - la.js_prev) AS js_prev_delta,
       AVG(lb.entropy - la.entropy) AS entropy_delta
FROM prefix x
JOIN la ON la.token_uid = x.uid_a
JOIN lb ON lb.token_uid = x.uid_b AND lb.layer = la.layer
GROUP BY la.layer
ORDER BY la.layer
