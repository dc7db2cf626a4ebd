-- fragment: mutation_events
-- description: Mutation events after the critical layer, one row per (token, mutation layer) (docs/analyses.md, "Mutation events").
-- reads: l
-- include: critical_layer
-- param min_held: int = 3          -- layers (from the critical layer on) a displaced candidate must have held top-1
-- param js_multiple: float = 5.0   -- a js_prev jump is js_prev > js_multiple x median js_prev after the critical layer ...
-- param js_min: float = 0.05       -- ... and > js_min nats (a floor for tokens whose stable stage is nearly flat)
w AS (  -- one ordered pass from the critical layer on: the previous layer's top-1 and js_prev
    SELECT l.token_uid, l.layer, l.top1_id, l.top1_prob, l.js_prev, l.p_out, c.critical_layer,
           LAG(l.top1_id) OVER (PARTITION BY l.token_uid ORDER BY l.layer) AS top1_before,
           LAG(l.js_prev) OVER (PARTITION BY l.token_uid ORDER BY l.layer) AS js_before
    FROM l JOIN crit c ON c.token_uid = l.token_uid
    WHERE l.layer >= c.critical_layer
),
stable AS (  -- the stable-stage median of js_prev: layers after the critical layer (a median ignores the jumps)
    SELECT token_uid, MEDIAN(js_prev) AS js_median FROM w WHERE layer > critical_layer GROUP BY token_uid
),
starts AS (  -- layers where a top-1 run begins (the critical layer, then every change of top-1)
    SELECT token_uid, layer, top1_before AS displaced_id,
           LAG(layer) OVER (PARTITION BY token_uid ORDER BY layer) AS held_since
    FROM w WHERE layer = critical_layer OR top1_id <> top1_before
),
top1_events AS (  -- the top-1 leaves a candidate that held it >= min_held layers (counted from c)
    SELECT token_uid, layer AS mutation_layer, displaced_id, layer - held_since AS held_layers
    FROM starts WHERE held_since IS NOT NULL AND layer - held_since >= $min_held
),
js_events AS (  -- js_prev crosses max(js_multiple x median, js_min) upwards after the critical layer
    SELECT w.token_uid, w.layer AS mutation_layer
    FROM w JOIN stable s ON s.token_uid = w.token_uid
    WHERE w.layer > w.critical_layer
      AND w.js_prev > GREATEST($js_multiple * s.js_median, $js_min)
      AND (w.js_before IS NULL OR w.js_before <= GREATEST($js_multiple * s.js_median, $js_min))
),
events AS (
    SELECT token_uid, mutation_layer, MAX(is_top1) AS is_top1, MAX(is_js) AS is_js,
           MAX(displaced_id) AS displaced_id, MAX(held_layers) AS held_layers
    FROM (SELECT token_uid, mutation_layer, 1 AS is_top1, 0 AS is_js, displaced_id, held_layers FROM top1_events
          UNION ALL
          SELECT token_uid, mutation_layer, 0 AS is_top1, 1 AS is_js,
                 CAST(NULL AS INTEGER) AS displaced_id, CAST(NULL AS INTEGER) AS held_layers FROM js_events) u
    GROUP BY token_uid, mutation_layer
)
