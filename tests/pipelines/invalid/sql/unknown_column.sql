SELECT resource_id,
  count(*) AS n,
  avg(resource) AS bad
FROM metrics
GROUP BY resource_id, tumble(interval '1 minute')
