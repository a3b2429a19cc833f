-- 5-minute features rolled up from the 1-minute windows (sample-weighted mean, extremes).
SELECT
    account_id,
    region,
    az,
    instance_type,
    resource_id,
    service,
    metric,
    window_start,
    window_end,
    sum(samples) AS samples,
    sum(mean * samples) / sum(samples) AS mean,
    min(min) AS min,
    max(max) AS max,
    max(p95) AS max_p95_1m,
    count(*) AS minutes_present,
    hour_of_day(window_start) AS hour_of_day,
    day_of_week(window_start) AS day_of_week
FROM features_1m
GROUP BY account_id, region, az, instance_type, resource_id, service, metric, tumble(interval '5 minutes')
