SELECT resource_id
FROM metric
