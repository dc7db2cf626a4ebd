-- name: divergence-curves
-- description: js_prev per layer by token class: median and interquartile range (and the median js_final).
-- param lens: str = 'final_norm'  -- lens mode: final_norm | raw
-- param role: str = 'generated'   -- which tokens: generated | prompt | image
SELECT COALESCE(t.label, 'non-object') AS token_class, y.layer, COUNT(*) AS n_tokens,
       MEDIAN(y.js_prev) AS js_prev_median,
       QUANTILE_CONT(y.js_prev, 0.25) AS js_prev_q25,
       QUANTILE_CONT(y.js_prev, 0.75) AS js_prev_q75,
       AVG(y.js_prev) AS js_prev_mean,
       MEDIAN(y.js_final) AS js_final_median
FROM layers y JOIN tokens t ON t.token_uid = y.token_uid
WHERE y.lens = $lens AND t.role = $role
GROUP BY COALESCE(t.label, 'non-object'), y.layer
ORDER BY token_class, y.layer
