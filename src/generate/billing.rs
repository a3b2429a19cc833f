//! Cost line items (CUR / FOCUS-like): per instance per hour (`BoxUsage:<type>` at the
//! on-demand price, or at the spot price in force for spot instances), and per account per hour
//! for S3 storage and data transfer. Each arrives an hour after its usage ends. About 3 % are
//! restated 6–30 hours later with the same `line_item_id` and a corrected cost. A cost leak
//! (labelled) triples one instance's hourly cost from some hour on — an idle volume or a
//! forgotten attachment billed to it.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::world::{ACCOUNTS, Resource};
use super::{Anomaly, BILLING_TOPIC, Emit, GenerateConfig, normal, rfc3339};

const HOUR: i64 = 3_600_000_000;
/// Usage is billed this long after it ends.
const DELAY: i64 = HOUR;

struct Item {
    id: String,
    start: i64,
    account: &'static str,
    service: &'static str,
    resource: Option<String>,
    usage_type: String,
    pricing: &'static str,
    amount: f64,
    cost: f64,
    team: String,
}

pub struct Billing {
    fleet: Vec<Resource>,
    leaks: Vec<(usize, i64, i64)>,
    /// The next usage hour to bill.
    next_hour: i64,
    /// Restatements due: time → items.
    restated: BTreeMap<i64, Vec<Item>>,
    rng: StdRng,
    serial: u64,
}

impl Billing {
    pub fn new(
        rng: &mut StdRng,
        fleet: &[Resource],
        config: &GenerateConfig,
        labels: &mut Vec<Anomaly>,
    ) -> Self {
        let end = config.start_us + config.span_us;
        let first = config.start_us - config.start_us.rem_euclid(HOUR);
        let mut leaks = Vec::new();
        for (i, r) in fleet.iter().enumerate() {
            if rng.random_bool((config.anomaly_share / 3.0).clamp(0.0, 1.0)) {
                let hours = (config.span_us / 2 / HOUR).max(1);
                let start =
                    first + config.span_us / 2 / HOUR * HOUR + rng.random_range(0..hours) * HOUR;
                labels.push(Anomaly {
                    kind: "cost_leak",
                    subject: r.id.clone(),
                    metric: "cost",
                    start: rfc3339(start),
                    end: rfc3339(end),
                    start_us: start,
                    end_us: end,
                });
                leaks.push((i, start, end));
            }
        }
        Billing {
            fleet: fleet.to_vec(),
            leaks,
            next_hour: first,
            restated: BTreeMap::new(),
            rng: StdRng::from_rng(rng),
            serial: 0,
        }
    }

    /// Emits the items (and restatements) due at or before `t`.
    pub fn emit_until(
        &mut self,
        t: i64,
        spot_price: &dyn Fn(&str, &str, i64) -> Option<f64>,
        out: &mut dyn Emit,
    ) -> super::Result<()> {
        while self.next_hour + HOUR + DELAY <= t {
            let hour = self.next_hour;
            self.next_hour += HOUR;
            let mut items = Vec::new();
            for (i, r) in self.fleet.iter().enumerate() {
                let (pricing, rate) = if r.spot {
                    (
                        "spot",
                        spot_price(r.instance.name, r.zone, hour)
                            .unwrap_or(r.instance.on_demand * 0.35),
                    )
                } else {
                    ("on_demand", r.instance.on_demand)
                };
                let leak = self
                    .leaks
                    .iter()
                    .any(|&(j, a, b)| j == i && (a..b).contains(&hour));
                let cost = rate * if leak { 3.0 } else { 1.0 };
                items.push(Item {
                    id: String::new(),
                    start: hour,
                    account: r.account,
                    service: "AmazonEC2",
                    resource: Some(r.id.clone()),
                    usage_type: format!("BoxUsage:{}", r.instance.name),
                    pricing,
                    amount: 1.0,
                    cost,
                    team: r.group.clone(),
                });
            }
            for account in ACCOUNTS {
                let storage_gb = 5_000.0 * (1.0 + 0.05 * normal(&mut self.rng)).max(0.5);
                let transfer_gb = 40.0 * (1.0 + 0.3 * normal(&mut self.rng)).max(0.0);
                for (service, usage_type, amount, price) in [
                    (
                        "AmazonS3",
                        "TimedStorage-ByteHrs",
                        storage_gb / 730.0,
                        0.023,
                    ),
                    (
                        "AWSDataTransfer",
                        "DataTransfer-Out-Bytes",
                        transfer_gb,
                        0.09,
                    ),
                ] {
                    items.push(Item {
                        id: String::new(),
                        start: hour,
                        account,
                        service,
                        resource: None,
                        usage_type: usage_type.into(),
                        pricing: "on_demand",
                        amount,
                        cost: amount * price,
                        team: "shared".into(),
                    });
                }
            }
            for mut item in items {
                self.serial += 1;
                item.id = format!("li-{:010}", self.serial);
                emit(&item, hour + HOUR + DELAY, out)?;
                if self.rng.random_bool(0.03) {
                    let due = hour + HOUR + DELAY + self.rng.random_range(6..30) * HOUR;
                    item.cost = (item.cost * self.rng.random_range(0.85..1.15) * 1e6).round() / 1e6;
                    self.restated.entry(due).or_default().push(item);
                }
            }
        }
        while let Some(entry) = self.restated.first_entry() {
            if *entry.key() > t {
                break;
            }
            let (due, items) = entry.remove_entry();
            for item in items {
                emit(&item, due, out)?;
            }
        }
        Ok(())
    }
}

fn emit(item: &Item, at: i64, out: &mut dyn Emit) -> super::Result<()> {
    let resource = item
        .resource
        .as_ref()
        .map_or("null".to_string(), |r| format!("\"{r}\""));
    let payload = format!(
        r#"{{"line_item_id":"{}","usage_start":"{}","usage_end":"{}","account_id":"{}","service":"{}","resource_id":{resource},"usage_type":"{}","pricing_model":"{}","usage_amount":{},"cost":{},"currency":"USD","tags":{{"team":"{}"}}}}"#,
        item.id,
        rfc3339(item.start),
        rfc3339(item.start + HOUR),
        item.account,
        item.service,
        item.usage_type,
        item.pricing,
        (item.amount * 1e6).round() / 1e6,
        (item.cost * 1e6).round() / 1e6,
        item.team
    );
    out.emit(BILLING_TOPIC, &item.id, &payload, at)
}
