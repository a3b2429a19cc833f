-- Per resource and metric, 1-minute tumbling windows of CloudWatch-style data points.
SELECT
    account_id,
    region,
    az,
    dimensions['InstanceType'] AS instance_type,
    resource_id,
    service,
    metric,
    window_start,
    window_end,
    count(*) AS samples,
    avg(value) AS mean,
    min(value) AS min,
    max(value) AS max,
    stddev(value) AS stddev,
    percentile_cont(value, 0.5) AS p50,
    percentile_cont(value, 0.95) AS p95,
    percentile_cont(value, 0.99) AS p99,
    hour_of_day(window_start) AS hour_of_day,
    day_of_week(window_start) AS day_of_week,
    is_business_hours(window_start) AS business_hours
FROM metrics
GROUP BY account_id, region, az, dimensions['InstanceType'], resource_id, service, metric, tumble(interval '1 minute')
