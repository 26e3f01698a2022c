//! Cost of the drop-in rewrites (DESIGN.md §5) against doing nothing, in one run:
//! - HAL link rewriting of a typical list response vs copying the same bytes;
//! - adding testmode/profileId to a create-payment body vs leaving it.
//!
//! Run: `cargo bench --bench rewrite`

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use mollie_gateway::rewrite::{with_body_defaults, LinkRewriter};
use std::hint::black_box;

/// A Mollie-like payments list page: `n` embedded payments, each with HAL links.
fn list_page(n: usize) -> Vec<u8> {
    let payment = |i: usize| {
        format!(
            r#"{{"resource":"payment","id":"tr_{i:010}","mode":"test","amount":{{"value":"10.00","currency":"EUR"}},"description":"Order {i}","method":null,"status":"open","createdAt":"2026-11-26T07:00:00+00:00","profileId":"pfl_QkEhN94Ba","redirectUrl":"https://shop.example/return/{i}","_links":{{"self":{{"href":"https://api.mollie.com/v2/payments/tr_{i:010}","type":"application/hal+json"}},"checkout":{{"href":"https://www.mollie.com/checkout/select-method/{i:010}","type":"text/html"}},"dashboard":{{"href":"https://my.mollie.com/dashboard/org_1/payments/tr_{i:010}","type":"text/html"}}}}}}"#
        )
    };
    let items: Vec<String> = (0..n).map(payment).collect();
    format!(
        r#"{{"count":{n},"_embedded":{{"payments":[{}]}},"_links":{{"self":{{"href":"https://api.mollie.com/v2/payments?limit={n}","type":"application/hal+json"}},"previous":null,"next":{{"href":"https://api.mollie.com/v2/payments?from=tr_next&limit={n}","type":"application/hal+json"}},"documentation":{{"href":"https://docs.mollie.com/reference/list-payments","type":"text/html"}}}}}}"#,
        items.join(",")
    )
    .into_bytes()
}

fn links(c: &mut Criterion) {
    for n in [1usize, 50] {
        let page = list_page(n);
        let mut g = c.benchmark_group(format!("links/{}B", page.len()));
        g.throughput(Throughput::Bytes(page.len() as u64));
        g.bench_function("copy (baseline)", |b| {
            b.iter(|| {
                let mut out = Vec::with_capacity(page.len() + 64);
                for chunk in page.chunks(16 * 1024) {
                    out.extend_from_slice(black_box(chunk));
                }
                out
            })
        });
        g.bench_function("rewrite", |b| {
            b.iter_batched(
                || {
                    LinkRewriter::new(
                        "https://api.mollie.com",
                        "http://mollie-gateway.internal:8080",
                    )
                },
                |mut r| {
                    let mut out = Vec::with_capacity(page.len() + 64);
                    for chunk in page.chunks(16 * 1024) {
                        r.feed(black_box(chunk), &mut out);
                    }
                    r.finish(&mut out);
                    out
                },
                BatchSize::SmallInput,
            )
        });
        g.finish();
    }
}

fn body_defaults(c: &mut Criterion) {
    let body = br#"{"amount":{"currency":"EUR","value":"10.00"},"description":"Order #12345","redirectUrl":"https://webshop.example.org/order/12345/","webhookUrl":"https://webshop.example.org/payments/webhook/","metadata":{"order_id":"12345"}}"#;
    let mut g = c.benchmark_group("body_defaults");
    g.bench_function("untouched (baseline)", |b| {
        b.iter(|| bytes::Bytes::copy_from_slice(black_box(body)))
    });
    g.bench_function("add testmode+profileId", |b| {
        b.iter(|| with_body_defaults(black_box(body), true, Some("pfl_QkEhN94Ba")))
    });
    g.finish();
}

criterion_group!(benches, links, body_defaults);
criterion_main!(benches);
