SELECT resource_id FROM metrics
GROUP BY resource_id, hop(interval '7 seconds', interval '1 minute')
