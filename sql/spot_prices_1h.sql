-- Per instance type, product and zone: the price changes within each hour.
SELECT
    region,
    az,
    instance_type,
    product,
    window_start,
    window_end,
    count(*) AS changes,
    avg(price) AS mean_price,
    min(price) AS min_price,
    max(price) AS max_price,
    stddev(price) AS price_stddev,
    (max(price) - min(price)) / avg(price) AS relative_range,
    hour_of_day(window_start) AS hour_of_day,
    day_of_week(window_start) AS day_of_week
FROM spot
GROUP BY region, az, instance_type, product, tumble(interval '1 hour')
