-- At most one reconciliation run is running per consumer, and one over every consumer (NULL
-- consumer_id, indexed as ''; no consumer id is empty): a second start while one runs is
-- refused (a unique violation the store reports as busy), so runs cannot pile up or race each
-- other's exception closes.
--
-- Runs a stopped process left running would make the index fail to build: all but the newest
-- running run of each consumer are marked failed first (times in microseconds).
UPDATE reconcile_runs
SET status = 'failed',
    finished_at = CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER),
    error = 'abandoned: a newer run of the same consumer was running when runs became one at a time'
WHERE status = 'running'
  AND EXISTS (
      SELECT 1 FROM reconcile_runs AS n
      WHERE n.status = 'running'
        AND COALESCE(n.consumer_id, '') = COALESCE(reconcile_runs.consumer_id, '')
        AND (n.started_at > reconcile_runs.started_at
             OR (n.started_at = reconcile_runs.started_at AND n.run_id > reconcile_runs.run_id))
  );

CREATE UNIQUE INDEX reconcile_runs_one_running
    ON reconcile_runs (COALESCE(consumer_id, ''))
    WHERE status = 'running';
