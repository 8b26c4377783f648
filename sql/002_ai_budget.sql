-- The deployment-wide AI budget: one token bucket per row, shared by every worker.
-- Arithmetic: streams/core/ratelimit.py (bucket_state); the rows are locked per take.
CREATE TABLE IF NOT EXISTS ai_budget (
    name     text             PRIMARY KEY,
    tokens   double precision NOT NULL,
    -- Epoch seconds of the database clock, so every worker refills on the same clock.
    updated  double precision NOT NULL
);
