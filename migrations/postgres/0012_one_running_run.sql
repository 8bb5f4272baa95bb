-- At most one reconciliation run is running per consumer, and one over every consumer (NULL
-- consumer_id, indexed as ''; no consumer id is empty): a second start while one runs is
-- refused (a unique violation the store reports as busy), so runs cannot pile up or race each
-- other's exception closes.
--
-- Runs a stopped process left running would make the index fail to build: all but the newest
-- running run of each consumer are marked failed first.
UPDATE reconcile_runs AS r
SET status = 'failed',
    finished_at = now(),
    error = 'abandoned: a newer run of the same consumer was running when runs became one at a time'
WHERE r.status = 'running'
  AND EXISTS (
      SELECT 1 FROM reconcile_runs AS n
      WHERE n.status = 'running'
        AND COALESCE(n.consumer_id, '') = COALESCE(r.consumer_id, '')
        AND (n.started_at, n.run_id) > (r.started_at, r.run_id)
  );

CREATE UNIQUE INDEX reconcile_runs_one_running
    ON reconcile_runs ((COALESCE(consumer_id, '')))
    WHERE status = 'running';
