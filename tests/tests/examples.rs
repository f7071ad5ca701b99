//! The examples of `examples/`, run end to end on three `weir-node` processes as their READMEs
//! tell a user to, with their answers checked against an independent computation over the same
//! generated input.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use chrono::{DateTime, Datelike, Timelike};
use serde_json::Value;
use tokio::time::Instant;
use weir_tests::process::binary;
use weir_tests::{http, psql_with_notices, python, ProcessCluster};

/// The directory of example `name`.
fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
}

/// Runs `cmd` to completion, returning its stdout; a failure fails the test with its stderr.
fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?} runs (`make deps` installs it): {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Three fresh `weir-node` processes, all up.
async fn three_nodes() -> ProcessCluster {
    let cluster = ProcessCluster::start(3, &[]);
    cluster.wait_members_up(3, Duration::from_secs(120)).await;
    cluster
}

/// The `weir` shell pointed at `cluster`'s first node, with `args`.
fn weir_cli(cluster: &ProcessCluster, args: &[&str]) -> Command {
    let mut cmd = Command::new(binary("weir"));
    cmd.args(["--server", &cluster.addr(0)]).args(args);
    cmd
}

/// The statements of a SQL file, comments dropped, in order.
fn statements(sql: &str) -> Vec<String> {
    let text: String = sql
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .map(|l| format!("{l}\n"))
        .collect();
    text.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Whether two result lines (`a|b|c`) say the same: numbers within `0.011` of each other (sums
/// of prices rounded to cents, added in another order), everything else as text.
fn same_line(got: &str, want: &str) -> bool {
    let (g, w): (Vec<&str>, Vec<&str>) = (got.split('|').collect(), want.split('|').collect());
    g.len() == w.len()
        && g.iter()
            .zip(&w)
            .all(|(g, w)| match (g.parse::<f64>(), w.parse::<f64>()) {
                (Ok(g), Ok(w)) => (g - w).abs() < 0.011,
                _ => g == w,
            })
}

/// What the restaurant example's questions answer, computed from its events directly.
#[derive(Default)]
struct Restaurant {
    /// Events per kind.
    kinds: BTreeMap<String, u64>,
    /// Searches per menu.
    searches: BTreeMap<String, u64>,
    /// Orders and their prices per cuisine.
    orders: BTreeMap<String, (u64, f64)>,
    /// Orders and their prices, with a coupon and without.
    coupons: BTreeMap<bool, (u64, f64)>,
    /// Reviews per number of stars.
    stars: BTreeMap<i64, u64>,
    /// Events other than orders per day of the week (0 = Sunday).
    weekdays: BTreeMap<u32, u64>,
    /// Events other than orders per hour of the day.
    hours: BTreeMap<u32, u64>,
}

impl Restaurant {
    /// Counts one event as posted (`event_ts` may be missing: an `ab` body).
    fn add(&mut self, e: &Value) {
        let kind = e["event_type"].as_str().expect("event_type").to_string();
        *self.kinds.entry(kind.clone()).or_default() += 1;
        let menu = e["menu"].as_str().unwrap_or_default().to_string();
        if kind == "order" {
            let price = e["price"].as_f64().expect("an order's price");
            let o = self.orders.entry(menu).or_default();
            o.0 += 1;
            o.1 += price;
            let c = self
                .coupons
                .entry(e["coupon"].as_bool().unwrap_or(false))
                .or_default();
            c.0 += 1;
            c.1 += price;
            return;
        }
        if kind == "menu_search" {
            *self.searches.entry(menu).or_default() += 1;
        }
        if kind == "review" {
            *self
                .stars
                .entry(e["stars"].as_i64().expect("a review's stars"))
                .or_default() += 1;
        }
        if let Some(ts) = e["event_ts"].as_str() {
            let ts = DateTime::parse_from_rfc3339(ts).expect("event_ts is RFC 3339");
            *self
                .weekdays
                .entry(ts.weekday().num_days_from_sunday())
                .or_default() += 1;
            *self.hours.entry(ts.hour()).or_default() += 1;
        }
    }

    /// The expected lines of each statement of `queries.sql`, in its order.
    fn answers(&self) -> Vec<Vec<String>> {
        let counts = |m: &BTreeMap<String, u64>| -> Vec<String> {
            m.iter().map(|(k, n)| format!("{k}|{n}")).collect()
        };
        let average = |n: u64, total: f64| total / n as f64;
        let reviews: u64 = self.stars.values().sum();
        let star_total: i64 = self.stars.iter().map(|(s, n)| s * *n as i64).sum();
        let mut busiest: Vec<(u32, u64)> = self.hours.iter().map(|(h, n)| (*h, *n)).collect();
        busiest.sort_by_key(|(h, n)| (std::cmp::Reverse(*n), *h));
        vec![
            counts(&self.kinds),
            counts(&self.searches),
            self.orders
                .iter()
                .map(|(c, (n, total))| format!("{c}|{n}|{total:.2}|{:.2}", average(*n, *total)))
                .collect(),
            self.coupons
                .iter()
                .map(|(c, (n, total))| format!("{}|{n}|{total:.2}", if *c { "t" } else { "f" }))
                .collect(),
            self.stars.iter().map(|(s, n)| format!("{s}|{n}")).collect(),
            vec![format!("{:.3}", star_total as f64 / reviews as f64)],
            self.weekdays
                .iter()
                .map(|(d, n)| format!("{d}|{n}"))
                .collect(),
            busiest
                .iter()
                .take(5)
                .map(|(h, n)| format!("{h}|{n}"))
                .collect(),
        ]
    }
}

/// The lines `psql -At` prints for `sql` on the node whose Postgres port is `pg`, or `None`
/// while it fails (a node still electing the leaders of the tables' regions).
async fn psql_lines(pg: &str, sql: &str) -> Option<Vec<String>> {
    let port: u16 = pg.rsplit(':').next()?.parse().ok()?;
    match psql_with_notices(port, &["-At", "-c", sql]).await {
        Ok((out, _)) => Some(out.lines().map(str::to_string).collect()),
        Err(e) => {
            eprintln!("retrying {sql}: {e}");
            None
        }
    }
}

/// Waits until each of `queries` answers what `want` says (the jobs catch up with the topic),
/// failing with the last answer after three minutes.
async fn wait_for_answers(pg: &str, queries: &[String], want: &[Vec<String>]) {
    assert_eq!(queries.len(), want.len(), "one answer per question");
    for (q, want) in queries.iter().zip(want) {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let got = psql_lines(pg, q).await.unwrap_or_default();
            if got.len() == want.len() && got.iter().zip(want).all(|(g, w)| same_line(g, w)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{q}\nanswered {got:?}\nexpected {want:?}"
            );
            // Each try starts a psql process: poll gently.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restaurant_events_posted_over_http_and_by_ab_split_into_tables_psql_reads() {
    let dir = example("restaurant");
    let scratch = tempfile::tempdir().expect("temp dir");
    let events = run(Command::new("python3")
        .arg(dir.join("gen.py"))
        .args(["--rows", "6000", "--seed", "4"]));
    let mut expected = Restaurant::default();
    let lines: Vec<&str> = events.lines().collect();
    for line in &lines {
        expected.add(&serde_json::from_str(line).expect("gen.py writes JSON lines"));
    }
    assert_eq!(lines.len(), 6000);

    let cluster = three_nodes().await;
    // As the README does it: the topic, tables and jobs from setup.sql with the `weir` shell.
    run(weir_cli(&cluster, &["sql", "-f"]).arg(dir.join("setup.sql")));

    // The app posts its events to any node, a thousand at a time.
    for (i, chunk) in lines.chunks(1000).enumerate() {
        let node = &cluster.nodes[i % 3];
        let body = chunk.join("\n");
        let (status, answer) = http(
            &node.http,
            "POST",
            "/v1/topics/menu_app/records",
            "application/x-ndjson",
            body.as_bytes(),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
    }
    let queries = statements(
        &std::fs::read_to_string(dir.join("queries.sql")).expect("queries.sql is readable"),
    );
    let pg = cluster.nodes[1].pg.clone();
    wait_for_answers(&pg, &queries, &expected.answers()).await;

    // Apache Bench posts one body again and again, as the seed's bench.sh did; each is an event.
    let bodies = scratch.path().join("ab");
    run(Command::new("python3")
        .arg(dir.join("gen.py"))
        .arg("--ab")
        .arg(&bodies));
    for (kind, n) in [("login", 200), ("order", 40)] {
        let body = bodies.join(format!("{kind}.json"));
        let text = std::fs::read_to_string(&body).expect("gen.py wrote the body");
        let out = run(Command::new("ab")
            .args(["-q", "-n", &n.to_string(), "-c", "4", "-p"])
            .arg(&body)
            .args(["-T", "application/json"])
            .arg(format!(
                "http://{}/v1/topics/menu_app/records",
                cluster.nodes[2].http
            )));
        // Every answer names the offsets it stored, so their lengths differ and ab counts those
        // as "Length" failures; a request that was refused or not answered is a real one.
        assert!(
            out.contains(&format!("Complete requests:      {n}\n"))
                && out.contains("(Connect: 0, Receive: 0, Length: ")
                && out.contains(", Exceptions: 0)")
                && !out.contains("Non-2xx"),
            "ab: {out}"
        );
        let event: Value = serde_json::from_str(&text).expect("a JSON body");
        for _ in 0..n {
            expected.add(&event);
        }
    }
    // Counts per kind and the orders' figures now include them (they have no time of their own,
    // so the questions of when are left to the events above).
    let want = expected.answers();
    wait_for_answers(&pg, &queries[..4], &want[..4]).await;
}

/// What the Berka example's questions answer, computed from its generated files directly.
#[derive(Default)]
struct Berka {
    /// Transactions and their amounts per month of the year.
    months: BTreeMap<u32, (u64, f64)>,
    /// Per year.
    years: BTreeMap<i32, (u64, f64)>,
    /// Per region of the account's district.
    regions: BTreeMap<String, (u64, f64)>,
    /// Per age level and gender of the account's owner: transactions and the owners making them.
    owners: BTreeMap<(String, String), (u64, BTreeSet<u64>)>,
}

/// The rows of a generated CSV file after its header, split at commas (the generator writes no
/// quoted fields).
fn csv_rows(path: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

impl Berka {
    /// Joins every transaction of `dir` with the dimension tables as the jobs do.
    fn from_files(dir: &Path) -> Berka {
        let region: BTreeMap<String, String> = csv_rows(&dir.join("district.csv"))
            .into_iter()
            .map(|r| (r[0].clone(), r[2].clone()))
            .collect();
        let district: BTreeMap<u64, String> = csv_rows(&dir.join("account.csv"))
            .into_iter()
            .map(|r| (r[0].parse().expect("account_id"), r[1].clone()))
            .collect();
        let birth: BTreeMap<u64, String> = csv_rows(&dir.join("client.csv"))
            .into_iter()
            .map(|r| (r[0].parse().expect("client_id"), r[1].clone()))
            .collect();
        let owner: BTreeMap<u64, u64> = csv_rows(&dir.join("disp.csv"))
            .into_iter()
            .filter(|r| r[3] == "OWNER")
            .map(|r| {
                (
                    r[2].parse().expect("account_id"),
                    r[1].parse().expect("client_id"),
                )
            })
            .collect();
        let mut b = Berka::default();
        let trans = std::fs::read_to_string(dir.join("trans.ndjson")).expect("trans.ndjson");
        for line in trans.lines() {
            let t: Value = serde_json::from_str(line).expect("a JSON transaction");
            let account = t["account_id"].as_u64().expect("account_id");
            let amount = t["amount"].as_f64().expect("amount");
            let date =
                chrono::NaiveDate::parse_from_str(t["date"].as_str().expect("date"), "%Y-%m-%d")
                    .expect("a date");
            let add = |e: &mut (u64, f64)| {
                e.0 += 1;
                e.1 += amount;
            };
            add(b.months.entry(date.month()).or_default());
            add(b.years.entry(date.year()).or_default());
            add(b
                .regions
                .entry(region[&district[&account]].clone())
                .or_default());
            let client = owner[&account];
            let born = &birth[&client];
            let (yy, mm): (i32, u32) = (
                born[0..2].parse().expect("birth year"),
                born[2..4].parse().expect("birth month"),
            );
            let age = date.year() - 1900 - yy;
            let level = match age {
                a if a < 30 => "under 30",
                a if a < 45 => "30 to 44",
                a if a < 60 => "45 to 59",
                _ => "60 and over",
            };
            let gender = if mm > 50 { "F" } else { "M" };
            let o = b
                .owners
                .entry((level.to_string(), gender.to_string()))
                .or_default();
            o.0 += 1;
            o.1.insert(client);
        }
        b
    }

    /// The expected lines of each statement of `queries.sql`, in its order.
    fn answers(&self) -> Vec<Vec<String>> {
        let totals = |k: String, (n, total): &(u64, f64)| format!("{k}|{n}|{total:.1}");
        vec![
            self.months
                .iter()
                .map(|(m, t)| totals(m.to_string(), t))
                .collect(),
            self.years
                .iter()
                .map(|(y, t)| totals(y.to_string(), t))
                .collect(),
            self.regions
                .iter()
                .map(|(r, t)| totals(r.clone(), t))
                .collect(),
            self.owners
                .iter()
                .map(|((level, gender), (n, clients))| {
                    let c = clients.len() as u64;
                    format!("{level}|{gender}|{n}|{c}|{:.2}", *n as f64 / c as f64)
                })
                .collect(),
        ]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn berka_transactions_replayed_at_random_intervals_are_enriched_by_stream_jobs() {
    let dir = example("berka");
    let scratch = tempfile::tempdir().expect("temp dir");
    let data = scratch.path();
    run(Command::new("python3")
        .arg(dir.join("gen.py"))
        .arg(data)
        .args(["--accounts", "300", "--trans", "4000", "--seed", "1"]));
    let expected = Berka::from_files(data);

    let cluster = three_nodes().await;
    // As the README does it: tables, the dimension tables loaded from CSV, then the jobs.
    let weir = |args: &[&str]| weir_cli(&cluster, args);
    run(weir(&["sql", "-f"]).arg(dir.join("tables.sql")));
    for table in ["district", "account", "client", "disp"] {
        run(weir(&["load", "csv"])
            .arg(data.join(format!("{table}.csv")))
            .args(["--table", table, "--header"]));
    }
    run(weir(&["sql", "-f"]).arg(dir.join("jobs.sql")));
    // The seed's producer: a few transactions at a time, at random intervals, to one node.
    run(Command::new("python3")
        .arg(dir.join("replay.py"))
        .arg(data.join("trans.ndjson"))
        .args(["--url", &format!("http://{}", cluster.nodes[1].http)])
        .args(["--batch", "400", "--max-pause", "0.02"]));

    let queries = statements(
        &std::fs::read_to_string(dir.join("queries.sql")).expect("queries.sql is readable"),
    );
    wait_for_answers(&cluster.nodes[2].pg, &queries, &expected.answers()).await;
}

/// What the datacenter example's questions answer, computed from its events directly.
#[derive(Default)]
struct Datacenter {
    /// The last report of each server: its data center, status and cpu_pct.
    latest: BTreeMap<String, (String, String, f64)>,
    /// Reports of critical or down servers per minute and data center.
    trouble: BTreeMap<(String, String), u64>,
    /// Reports, their cpu_pct and mem_pct summed, per data center.
    load: BTreeMap<String, (u64, f64, f64)>,
}

impl Datacenter {
    /// Counts one report.
    fn add(&mut self, e: &Value) {
        let text = |f: &str| e[f].as_str().unwrap_or_else(|| panic!("{f}")).to_string();
        let (dc, status) = (text("datacenter"), text("status"));
        let cpu = e["cpu_pct"].as_f64().expect("cpu_pct");
        let ts = DateTime::parse_from_rfc3339(&text("ts")).expect("ts is RFC 3339");
        if status == "critical" || status == "down" {
            // psql's rendering of the window's start.
            let minute = ts.format("%Y-%m-%d %H:%M:00.000000+00").to_string();
            *self.trouble.entry((minute, dc.clone())).or_default() += 1;
        }
        let l = self.load.entry(dc.clone()).or_default();
        l.0 += 1;
        l.1 += cpu;
        l.2 += e["mem_pct"].as_f64().expect("mem_pct");
        self.latest.insert(text("server_id"), (dc, status, cpu));
    }

    /// The expected lines of each statement of `queries.sql`, in its order.
    fn answers(&self) -> Vec<Vec<String>> {
        let mut pivot: BTreeMap<&str, [u64; 4]> = BTreeMap::new();
        for (dc, status, _) in self.latest.values() {
            let i = ["ok", "warning", "critical", "down"]
                .iter()
                .position(|s| s == status)
                .expect("a known status");
            pivot.entry(dc).or_default()[i] += 1;
        }
        vec![
            pivot
                .iter()
                .map(|(dc, n)| format!("{dc}|{}|{}|{}|{}", n[0], n[1], n[2], n[3]))
                .collect(),
            self.trouble
                .iter()
                .map(|((minute, dc), n)| format!("{minute}|{dc}|{n}"))
                .collect(),
            self.load
                .iter()
                .map(|(dc, (n, cpu, mem))| {
                    format!("{dc}|{n}|{:.2}|{:.2}", cpu / *n as f64, mem / *n as f64)
                })
                .collect(),
            self.latest
                .iter()
                .filter(|(_, (_, _, cpu))| *cpu >= 90.0)
                .map(|(server, (_, status, cpu))| format!("{server}|{status}|{cpu}"))
                .collect(),
        ]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn datacenter_reports_sent_by_kafka_clients_keep_a_pivot_and_per_minute_windows() {
    let dir = example("datacenter");
    let scratch = tempfile::tempdir().expect("temp dir");
    let events = scratch.path().join("events.ndjson");
    run(Command::new("python3")
        .arg(dir.join("gen.py"))
        .args(["--servers-per-rack", "4", "--minutes", "15", "--out"])
        .arg(&events));
    let mut expected = Datacenter::default();
    let text = std::fs::read_to_string(&events).expect("gen.py wrote the events");
    for line in text.lines() {
        expected.add(&serde_json::from_str(line).expect("gen.py writes JSON lines"));
    }

    let cluster = three_nodes().await;
    run(weir_cli(&cluster, &["sql", "-f"]).arg(dir.join("setup.sql")));
    // The servers' agents: a Kafka client (kafka-python), each report keyed by its server.
    let sent = run(Command::new(python())
        .arg(dir.join("emit.py"))
        .arg(&events)
        .args(["--bootstrap", &cluster.nodes[1].kafka]));
    assert!(sent.starts_with("sent 1440 events"), "{sent}");

    let queries = statements(
        &std::fs::read_to_string(dir.join("queries.sql")).expect("queries.sql is readable"),
    );
    wait_for_answers(&cluster.nodes[0].pg, &queries, &expected.answers()).await;
}

/// What the loyalty example's questions answer, computed from its generated files directly.
#[derive(Default)]
struct Loyalty {
    /// Cleaned name of each customer.
    names: BTreeMap<u64, String>,
    /// Customers with a date of birth in either format, an email, a phone.
    with_birth_date: u64,
    with_email: u64,
    with_phone: u64,
    /// Orders and points per customer and day.
    points: BTreeMap<(u64, String), (u64, i64)>,
    /// Order lines kept (a price above 0), without a price, and lines that are not orders.
    kept: u64,
    without_price: u64,
    not_orders: u64,
    /// `customer_id|item|price` of every line that is an order (the price as Rust prints it).
    lines: BTreeSet<String>,
}

impl Loyalty {
    /// Reads customer.csv and the order logs as the example's jobs and schedules clean them.
    fn from_files(customers: &Path, spool: &Path) -> Loyalty {
        let mut l = Loyalty::default();
        let text = std::fs::read_to_string(customers).expect("customer.csv");
        for line in text.lines().skip(1) {
            // The generator quotes every text field but the date and puts no comma inside one.
            let f: Vec<&str> = line.split(',').map(|f| f.trim_matches('"')).collect();
            let name = f[1]
                .split_whitespace()
                .map(|w| {
                    let w = w.to_lowercase();
                    let mut c = w.chars();
                    c.next()
                        .map(|first| first.to_uppercase().chain(c).collect::<String>())
                        .unwrap_or_default()
                })
                .collect::<Vec<_>>()
                .join(" ");
            l.names.insert(f[0].parse().expect("customer_id"), name);
            let dob = f[2];
            if chrono::NaiveDate::parse_from_str(dob, "%Y-%m-%d").is_ok()
                || chrono::NaiveDate::parse_from_str(dob, "%d/%m/%Y").is_ok()
            {
                l.with_birth_date += 1;
            }
            l.with_email += u64::from(!f[3].trim().is_empty());
            l.with_phone += u64::from(f[4].chars().any(|c| c.is_ascii_digit()));
        }
        let mut logs: Vec<PathBuf> = std::fs::read_dir(spool)
            .expect("the spool directory")
            .map(|e| e.expect("a directory entry").path())
            .collect();
        logs.sort();
        for log in logs {
            for line in std::fs::read_to_string(&log).expect("an order log").lines() {
                let f: Vec<&str> = line.split(',').collect();
                if f.len() != 4 {
                    l.not_orders += 1;
                    continue;
                }
                let customer: u64 = f[0].parse().expect("customer_id");
                let price: f64 = f[2].parse().expect("price");
                l.lines.insert(format!("{}|{}|{price}", f[0], f[1]));
                if price <= 0.0 {
                    l.without_price += 1;
                    continue;
                }
                l.kept += 1;
                let day = f[3][..10].to_string();
                let p = l.points.entry((customer, day)).or_default();
                p.0 += 1;
                p.1 += (price / 10.0).floor() as i64;
            }
        }
        l
    }

    /// The expected lines of the first four statements of `queries.sql`.
    fn answers(&self) -> Vec<Vec<String>> {
        let mut per_customer: BTreeMap<u64, (i64, u64)> = BTreeMap::new();
        for ((customer, _), (orders, points)) in &self.points {
            let c = per_customer.entry(*customer).or_default();
            c.0 += points;
            c.1 += orders;
        }
        let mut top: Vec<(u64, i64, u64)> = per_customer
            .into_iter()
            .map(|(c, (points, orders))| (c, points, orders))
            .collect();
        top.sort_by_key(|(c, points, _)| (std::cmp::Reverse(*points), *c));
        vec![
            top.iter()
                .take(10)
                .map(|(c, points, orders)| format!("{c}|{}|{points}|{orders}", self.names[c]))
                .collect(),
            self.points
                .iter()
                .filter(|((c, _), _)| *c == 42)
                .map(|((_, day), (orders, points))| format!("{day}|{orders}|{points}"))
                .collect(),
            vec![format!(
                "{}|{}|{}|{}",
                self.names.len(),
                self.with_birth_date,
                self.with_email,
                self.with_phone
            )],
            vec![format!(
                "{}|{}|{}",
                self.kept, self.without_price, self.not_orders
            )],
        ]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn loyalty_orders_from_a_spool_directory_earn_points_on_a_schedule() {
    let dir = example("loyalty");
    let scratch = tempfile::tempdir().expect("temp dir");
    let customers = scratch.path().join("customer.csv");
    let spool = scratch.path().join("spool");
    run(Command::new("python3")
        .arg(dir.join("gen.py"))
        .args(["customers", "--rows", "1000"])
        .arg(&customers));
    run(Command::new("python3")
        .arg(dir.join("gen.py"))
        .args(["orders", "--files", "3", "--lines", "1000"])
        .arg(&spool));
    let expected = Loyalty::from_files(&customers, &spool);
    assert!(expected.points.contains_key(&(42, "2024-06-01".into())));

    let cluster = three_nodes().await;
    let weir = |args: &[&str]| weir_cli(&cluster, args);
    run(weir(&["sql", "-f"]).arg(dir.join("setup.sql")));
    run(weir(&["load", "csv"])
        .arg(&customers)
        .args(["--table", "customers", "--header"]));
    run(Command::new("python3")
        .arg(dir.join("spool.py"))
        .arg(&spool)
        .args([
            "--url",
            &format!("http://{}", cluster.nodes[2].http),
            "--once",
        ]));
    // Every log was sent and marked done.
    let left: Vec<String> = std::fs::read_dir(&spool)
        .expect("the spool directory")
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .to_string_lossy()
                .to_string()
        })
        .filter(|n| !n.ends_with(".COMPLETED"))
        .collect();
    assert!(left.is_empty(), "not marked done: {left:?}");

    let queries = statements(
        &std::fs::read_to_string(dir.join("queries.sql")).expect("queries.sql is readable"),
    );
    let pg = &cluster.nodes[1].pg;
    wait_for_answers(pg, &queries[..4], &expected.answers()).await;
    // The random read: whichever order landed first in partition 0, it is one of the orders.
    let row = psql_lines(pg, &queries[4]).await.expect("the random read");
    let [row] = row.as_slice() else {
        panic!("one row for '0-0000000000': {row:?}")
    };
    let cells: Vec<&str> = row.split('|').collect();
    let [key, customer, item, price] = cells.as_slice() else {
        panic!("row_key|customer_id|item|price: {row}")
    };
    assert_eq!(*key, "0-0000000000");
    // Prices compared as numbers (the log may write 68.0 where psql prints 68).
    let price: f64 = price.parse().expect("a price");
    let order = format!("{customer}|{item}|{price}");
    assert!(expected.lines.contains(&order), "{order} is not an order");
}

/// What the cars example's questions answer, computed from its sales directly.
#[derive(Default)]
struct Cars {
    /// Sales and revenue per brand.
    brands: BTreeMap<String, (u64, f64)>,
    /// Per country and branch.
    branches: BTreeMap<(String, String), (u64, f64)>,
    /// Per minute (as psql prints the window's start).
    minutes: BTreeMap<String, (u64, f64)>,
    /// Revenue per minute and branch.
    branch_minutes: BTreeMap<(String, String), f64>,
}

/// The threshold of `examples/cars/setup.sql`'s alert rule.
const CARS_ALERT_REVENUE: f64 = 500_000.0;

impl Cars {
    /// Counts one sale.
    fn add(&mut self, e: &Value) {
        let text = |f: &str| e[f].as_str().unwrap_or_else(|| panic!("{f}")).to_string();
        let price = e["transaction_price"].as_f64().expect("transaction_price");
        let ts = DateTime::parse_from_rfc3339(&text("ts")).expect("ts is RFC 3339");
        let minute = ts.format("%Y-%m-%d %H:%M:00.000000+00").to_string();
        let add = |t: &mut (u64, f64)| {
            t.0 += 1;
            t.1 += price;
        };
        add(self.brands.entry(text("car_brand")).or_default());
        add(self
            .branches
            .entry((text("country"), text("branch")))
            .or_default());
        add(self.minutes.entry(minute.clone()).or_default());
        *self
            .branch_minutes
            .entry((minute, text("branch")))
            .or_default() += price;
    }

    /// The expected lines of each statement of `queries.sql`, in its order.
    fn answers(&self) -> Vec<Vec<String>> {
        vec![
            self.brands
                .iter()
                .map(|(b, (n, r))| format!("{b}|{n}|{r:.2}"))
                .collect(),
            self.branches
                .iter()
                .map(|((c, b), (n, r))| format!("{c}|{b}|{n}|{r:.2}"))
                .collect(),
            self.minutes
                .iter()
                .map(|(m, (n, r))| format!("{m}|{n}|{r:.2}"))
                .collect(),
            self.branch_minutes
                .iter()
                .filter(|(_, r)| **r > CARS_ALERT_REVENUE)
                .map(|((m, b), r)| format!("{m}|{b}|{r:.2}"))
                .collect(),
        ]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cars_sales_posted_over_http_keep_a_time_series_raise_alerts_and_export() {
    let dir = example("cars");
    let scratch = tempfile::tempdir().expect("temp dir");
    let sales = run(Command::new("python3")
        .arg(dir.join("gen.py"))
        .args(["--minutes", "20"]));
    let mut expected = Cars::default();
    let lines: Vec<&str> = sales.lines().collect();
    let mut total = 0.0;
    for line in &lines {
        let sale: Value = serde_json::from_str(line).expect("gen.py writes JSON lines");
        total += sale["transaction_price"].as_f64().expect("a price");
        expected.add(&sale);
    }
    assert!(
        !expected.answers()[3].is_empty(),
        "the generated sales raise some alerts"
    );

    let cluster = three_nodes().await;
    let weir = |args: &[&str]| weir_cli(&cluster, args);
    run(weir(&["sql", "-f"]).arg(dir.join("setup.sql")));
    for (i, chunk) in lines.chunks(200).enumerate() {
        let (status, answer) = http(
            &cluster.nodes[i % 3].http,
            "POST",
            "/v1/topics/car_transactions/records",
            "application/x-ndjson",
            chunk.join("\n").as_bytes(),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
    }
    let (status, answer) = http(
        &cluster.nodes[0].http,
        "POST",
        "/v1/topics/app_logs/records",
        "application/json",
        br#"["sales app started on host-7"]"#,
    )
    .await;
    assert_eq!(status, 200, "{answer}");

    let queries = statements(
        &std::fs::read_to_string(dir.join("queries.sql")).expect("queries.sql is readable"),
    );
    let pg = &cluster.nodes[2].pg;
    wait_for_answers(pg, &queries, &expected.answers()).await;

    // The raw topic, exported to Parquet as the README does and read back as an external table.
    let archive = scratch.path().join("cars.parquet");
    let archive = archive.to_str().expect("a UTF-8 path");
    run(&mut weir(&[
        "sql",
        &format!(
            "COPY (SELECT transaction_id, car_brand, country, branch, transaction_price, ts \
             FROM car_transactions) TO '{archive}' STORED AS PARQUET"
        ),
    ]));
    run(&mut weir(&[
        "sql",
        &format!("CREATE EXTERNAL TABLE cars_archive STORED AS PARQUET LOCATION '{archive}'"),
    ]));
    wait_for_answers(
        pg,
        &[
            "SELECT count(*), round(sum(transaction_price), 2) FROM cars_archive".to_string(),
            "SELECT message FROM app_logs".to_string(),
        ],
        &[
            vec![format!("{}|{total:.2}", lines.len())],
            vec!["sales app started on host-7".to_string()],
        ],
    )
    .await;
}
