//! wrk: the HTTP ceiling. wrk POSTs a body of walhook's shape and size to
//! the same nginx location over WRK_CONNECTIONS kept-alive connections;
//! then walhook-post sends the same requests with walhook's HTTP client
//! stack alone (hyper's HTTP/1.1 connections driven in lanes, as walhook's
//! are), POST_CONCURRENCY in flight. walhook ÷ walhook-post is what
//! walhook's own work per change costs, walhook-post ÷ wrk the library's.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::bench::Bench;
use crate::process::{log_file, tail, wait_exit, KillOnDrop};
use crate::procfs::{self, MachineBusy, MachineTicks};
use crate::report::{ratio, Better};

/// The headers walhook sends, with values of their usual length.
const HEADERS: [(&str, &str); 9] = [
    ("Content-Type", "application/json; charset=utf-8"),
    ("User-Agent", "walhook/0.1.0"),
    ("X-SuperOffice-Event", "bench_item.changed"),
    (
        "X-SuperOffice-EventId",
        "6f0c1d7e-5c1a-5f0e-9a3b-1c2d3e4f5a6b",
    ),
    ("X-SuperOffice-Retry", "0"),
    (
        "X-SuperOffice-Signature",
        "Nq8Yp3b2n0cD9m0ZQe5oYkXh0c3mQyVq1J0b2y7s8pE=",
    ),
    ("webhook-id", "6f0c1d7e-5c1a-5f0e-9a3b-1c2d3e4f5a6b"),
    ("webhook-timestamp", "1767254400"),
    (
        "webhook-signature",
        "v1,Kq3Yp3b2n0cD9m0ZQe5oYkXh0c3mQyVq1J0b2y7s8pE=",
    ),
];

/// A bench_item.changed body as walhook sends it, its label padded so the
/// body is about 600 bytes.
fn body() -> String {
    let template = r#"{"EventId":"6f0c1d7e-5c1a-5f0e-9a3b-1c2d3e4f5a6b","Timestamp":"2026-01-01T08:00:00.123456Z","Changes":["id","n","label"],"ChangesExact":false,"Event":"bench_item.changed","PrimaryKey":4242,"Entity":"bench_item","ContextIdentifier":"Default","ChangedByAssociateId":0,"WebhookName":"bench","FieldValues":{"id":4242,"n":4243,"label":"LABEL"},"MissingColumns":[],"Table":"public.bench_item","Lsn":"0/16B3748"}"#;
    let mut label = "item 4242 upd".to_owned();
    let pad = 600i64 - template.len() as i64 + 5 - label.len() as i64;
    if pad > 0 {
        label = format!("{label} {}", "x".repeat(pad as usize));
    }
    template.replace("LABEL", &label)
}

struct Run {
    requests: f64,
    rate: f64,
    /// Its own CPU per request, µs.
    client_us: f64,
    nginx_us: f64,
    machine: MachineBusy,
}

pub async fn run(b: &mut Bench) -> anyhow::Result<()> {
    let body = body();
    let body_file = b.dir.join("wrk-body.json");
    std::fs::write(&body_file, &body).context("writing the body")?;
    let url = b.nginx()?.url();
    let wrk = wrk(b, &body_file, &url, body.len()).await?;
    let post = post(b, &body_file, &url).await?;

    let (conns, in_flight) = (b.knobs.wrk_connections, b.knobs.post_concurrency);
    let wrk_figure = format!("wrk -> nginx ({} B, {conns} conns)", body.len());
    let post_figure = format!("hyper client alone ({in_flight} in flight)");
    let nginx = b.carry.nginx.as_ref();
    let r = &mut b.report;
    match (nginx, b.carry.decode_us) {
        (Some(ng), Some(decode_us)) => {
            let phase = ng
                .phase_rate
                .map(|p| format!(", first to last {}", ratio(p, wrk.rate)))
                .unwrap_or_default();
            r.row(
                "wrk",
                &wrk_figure,
                &format!("{:.0} requests/s", wrk.rate),
                &format!(
                    "walhook/wrk {} (receiver-side {}{phase})",
                    ratio(ng.rate, wrk.rate),
                    ratio(ng.delivered_rate, wrk.rate)
                ),
                "",
            );
            r.row(
                "wrk",
                "  CPU per request (us)",
                &format!("wrk {:.1}, nginx {:.1}", wrk.client_us, wrk.nginx_us),
                &format!(
                    "walhook {:.1}, its walsender {:.1}, decode only {decode_us:.1}",
                    ng.walhook_us, ng.walsender_us
                ),
                "",
            );
            // Two cores shared by nginx, the walsender and the client: the
            // rate at which they would be saturated with walhook as the
            // client, and with a client as lean as wrk that still decodes
            // and signs (walhook's CPU per change in section decode).
            let with_walhook = 2e6 / (ng.walhook_us + wrk.nginx_us + ng.walsender_us);
            let lean = 2e6 / (wrk.client_us + decode_us + wrk.nginx_us + ng.walsender_us);
            r.row(
                "wrk",
                "  2 cores saturated at",
                &format!("{with_walhook:.0}/s (walhook)"),
                &format!("{lean:.0}/s (wrk-lean client + decode)"),
                "",
            );
            r.row(
                "wrk",
                "  machine during wrk",
                &wrk.machine.busy(),
                &wrk.machine.detail(),
                "",
            );
            r.row(
                "wrk",
                &post_figure,
                &format!("{:.0} requests/s", post.rate),
                &format!(
                    "walhook/it {}, it/wrk {}",
                    ratio(ng.rate, post.rate),
                    ratio(post.rate, wrk.rate)
                ),
                "",
            );
        }
        _ => {
            r.row(
                "wrk",
                &wrk_figure,
                &format!("{:.0} requests/s", wrk.rate),
                "walhook/wrk: run sections decode and nginx too",
                "",
            );
            r.row(
                "wrk",
                &post_figure,
                &format!("{:.0} requests/s", post.rate),
                &format!("it/wrk {}", ratio(post.rate, wrk.rate)),
                "",
            );
        }
    }
    r.row(
        "wrk",
        "  CPU per request (us)",
        &format!("it {:.1}, nginx {:.1}", post.client_us, post.nginx_us),
        &format!("machine: {}", post.machine.busy()),
        "",
    );
    r.figure(
        "wrk.wrk_requests_per_s",
        wrk.rate,
        "requests/s",
        Better::Higher,
    );
    r.figure(
        "wrk.walhook_post_requests_per_s",
        post.rate,
        "requests/s",
        Better::Higher,
    );
    r.figure(
        "wrk.walhook_post_cpu_us_per_request",
        post.client_us,
        "µs",
        Better::Lower,
    );
    say!(
        "wrk: {:.0} requests in all; walhook-post {:.0}",
        wrk.requests,
        post.requests
    );
    Ok(())
}

async fn wrk(
    b: &mut Bench,
    body_file: &std::path::Path,
    url: &str,
    body_len: usize,
) -> anyhow::Result<Run> {
    let k = &b.knobs;
    let mut lua = format!(
        "wrk.method = \"POST\"\nlocal f = assert(io.open(\"{}\", \"rb\"))\nwrk.body = f:read(\"*a\")\nf:close()\n",
        body_file.display()
    );
    for (name, value) in HEADERS {
        lua.push_str(&format!("wrk.headers[\"{name}\"] = \"{value}\"\n"));
    }
    let script = b.dir.join("wrk.lua");
    std::fs::write(&script, lua).context("writing wrk.lua")?;
    let threads = k.wrk_connections.min(2);
    say!(
        "wrk: {}s, {} connections, {body_len}-byte body to {url}",
        k.wrk_seconds,
        k.wrk_connections
    );
    let log = b.dir.join("wrk.log");
    let (out, err) = log_file(&log)?;
    // CPU per request of nginx and of wrk itself (a minimal client).
    let nginx_before = b.nginx()?.workers_cpu();
    let children_before = procfs::finished_children_cpu()?;
    let machine_before = MachineTicks::now()?;
    let mut child = KillOnDrop(
        Command::new("wrk")
            .args([
                "-t",
                &threads.to_string(),
                "-c",
                &k.wrk_connections.to_string(),
            ])
            .args(["-d", &format!("{}s", k.wrk_seconds), "-s"])
            .arg(&script)
            .arg(url)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .context("starting wrk (apt-get install wrk)")?,
    );
    let status = wait_exit(&mut child.0, Duration::from_secs(k.wrk_seconds + 60))
        .await?
        .context("wrk did not finish")?;
    let machine = machine_before.busy_since()?;
    let wrk_cpu = procfs::finished_children_cpu()? - children_before;
    let nginx_cpu = b.nginx()?.workers_cpu() - nginx_before;
    let output = std::fs::read_to_string(&log).context("reading wrk's output")?;
    if !status.success() {
        bail!("wrk failed ({status}):\n{output}");
    }
    if output.contains("Non-2xx") || output.contains("Socket errors") {
        bail!("wrk saw failed requests:\n{output}");
    }
    let rate: f64 = output
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .filter(|r: &f64| *r > 0.0)
        .with_context(|| format!("wrk reported no request rate:\n{output}"))?;
    let requests: f64 = output
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .filter(|r: &f64| *r > 0.0)
        .with_context(|| format!("wrk reported no request count:\n{output}"))?;
    let run = Run {
        requests,
        rate,
        client_us: wrk_cpu * 1e6 / requests,
        nginx_us: nginx_cpu * 1e6 / requests,
        machine,
    };
    say!(
        "wrk: {rate:.0} requests/s; CPU per request: wrk {:.1} us, nginx {:.1} us; machine: {}",
        run.client_us,
        run.nginx_us,
        run.machine
    );
    Ok(run)
}

async fn post(b: &mut Bench, body_file: &std::path::Path, url: &str) -> anyhow::Result<Run> {
    let k = &b.knobs;
    say!(
        "walhook-post: {}s, {} requests in flight, the same body and headers to {url}",
        k.wrk_seconds,
        k.post_concurrency
    );
    let mut command = Command::new(&b.tools.post);
    command
        .arg("--body-file")
        .arg(body_file)
        .args(["--concurrency", &k.post_concurrency.to_string()])
        .args(["--seconds", &k.wrk_seconds.to_string()]);
    for (name, value) in HEADERS {
        command.args(["--header", &format!("{name}: {value}")]);
    }
    command.arg(url);
    let log = b.dir.join("post.log");
    let (out, err) = log_file(&log)?;
    let nginx_before = b.nginx()?.workers_cpu();
    let machine_before = MachineTicks::now()?;
    let mut child = KillOnDrop(
        command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {}", b.tools.post.display()))?,
    );
    let status = wait_exit(&mut child.0, Duration::from_secs(k.wrk_seconds + 60))
        .await?
        .context("walhook-post did not finish")?;
    let machine = machine_before.busy_since()?;
    let nginx_cpu = b.nginx()?.workers_cpu() - nginx_before;
    if !status.success() {
        bail!("walhook-post failed ({status}):\n{}", tail(&log, 20));
    }
    // "requests N seconds S cpu_seconds C failed F"
    let output = std::fs::read_to_string(&log).context("reading walhook-post's output")?;
    let line = output
        .lines()
        .find(|l| l.starts_with("requests "))
        .with_context(|| format!("walhook-post reported no request count:\n{output}"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let field = |name: &str| -> anyhow::Result<f64> {
        words
            .iter()
            .position(|w| *w == name)
            .and_then(|i| words.get(i + 1)?.parse().ok())
            .with_context(|| format!("walhook-post's line has no {name}: {line}"))
    };
    let (requests, seconds, cpu, failed) = (
        field("requests")?,
        field("seconds")?,
        field("cpu_seconds")?,
        field("failed")?,
    );
    if requests <= 0.0 {
        bail!("walhook-post reported no request count: {line}");
    }
    if failed != 0.0 {
        bail!("walhook-post: {failed} requests were not answered 2xx");
    }
    let run = Run {
        requests,
        rate: requests / seconds,
        client_us: cpu * 1e6 / requests,
        nginx_us: nginx_cpu * 1e6 / requests,
        machine,
    };
    say!(
        "walhook-post: {:.0} requests/s; CPU per request: it {:.1} us, nginx {:.1} us; machine: {}",
        run.rate,
        run.client_us,
        run.nginx_us,
        run.machine
    );
    Ok(run)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_body_is_walhook_sized_json() {
        let body = super::body();
        assert!((595..=610).contains(&body.len()), "{} bytes", body.len());
        let value: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(value["Event"], "bench_item.changed");
    }
}
