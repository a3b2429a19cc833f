-- Hourly cost per account and service, split by pricing model.
SELECT
    account_id,
    service,
    window_start,
    window_end,
    count(*) AS line_items,
    count(DISTINCT resource_id) AS resources,
    sum(cost) AS cost,
    sum(CASE WHEN pricing_model = 'on_demand' THEN cost ELSE 0 END) AS on_demand_cost,
    sum(CASE WHEN pricing_model = 'spot' THEN cost ELSE 0 END) AS spot_cost,
    sum(CASE WHEN pricing_model IN ('reserved', 'savings_plan') THEN cost ELSE 0 END) AS committed_cost,
    sum(usage_amount) AS usage_amount,
    max(currency) AS currency
FROM billing
GROUP BY account_id, service, tumble(interval '1 hour')
