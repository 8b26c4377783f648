-- AI spend per UTC day across the deployment, against AI_BUDGET_USD_PER_DAY.
CREATE TABLE IF NOT EXISTS ai_spend (
    day  date             PRIMARY KEY,
    usd  double precision NOT NULL DEFAULT 0
);
