-- fragment: stages
-- description: Per token, the three stages: rapid evolution [0, critical), stabilisation [critical, mutation), mutation [mutation, L] (docs/analyses.md, "Stages").
-- reads: l
-- include: mutation_events
first_event AS (SELECT token_uid, MIN(mutation_layer) AS mutation_layer FROM events GROUP BY token_uid),
stages AS (  -- lengths in layers; a token that never stands out is all rapid evolution
    SELECT c.token_uid, c.critical_layer, f.mutation_layer, c.last_layer,
           COALESCE(c.critical_layer, c.last_layer + 1) AS rapid_layers,
           CASE WHEN c.critical_layer IS NULL THEN 0
                ELSE COALESCE(f.mutation_layer, c.last_layer + 1) - c.critical_layer END AS stable_layers,
           CASE WHEN f.mutation_layer IS NULL THEN 0 ELSE c.last_layer + 1 - f.mutation_layer END AS mutation_layers
    FROM crit c LEFT JOIN first_event f ON f.token_uid = c.token_uid
)
