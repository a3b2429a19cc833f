-- Hourly CPU per resource from its 5-minute windows (sample-weighted mean, and the busiest
-- 5 minutes): the demand the cpu_demand stage forecasts.
SELECT
    account_id,
    region,
    az,
    instance_type,
    resource_id,
    window_start,
    window_end,
    sum(mean * samples) / sum(samples) AS cpu,
    max(mean) AS cpu_max_5m,
    count(*) AS windows
FROM features_5m
WHERE metric = 'CPUUtilization'
GROUP BY account_id, region, az, instance_type, resource_id, tumble(interval '1 hour')
