-- name: divergence-curves
-- description: js_prev per layer by token class: median and interquartile range (and the median js_final).
-- The definitions: docs/analyses.md, "Hallucination link".
WITH
-- include: token_layers
SELECT COALESCE(t.label, 'non-object') AS token_class, l.layer, COUNT(*) AS n_tokens,
       MEDIAN(l.js_prev) AS js_prev_median,
       QUANTILE_CONT(l.js_prev, 0.25) AS js_prev_q25,
       QUANTILE_CONT(l.js_prev, 0.75) AS js_prev_q75,
       AVG(l.js_prev) AS js_prev_mean,
       MEDIAN(l.js_final) AS js_final_median
FROM l JOIN tokens t ON t.token_uid = l.token_uid
GROUP BY COALESCE(t.label, 'non-object'), l.layer
ORDER BY token_class, l.layer
