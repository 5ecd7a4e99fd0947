//! `millgate check`: validates a configuration and lists what it defines, with advice.

use std::path::PathBuf;
use std::process::ExitCode;

use millgate::warnings;
use millgate_actors::Config;

/// Runs `millgate check`.
pub fn check(config: Option<&PathBuf>) -> ExitCode {
    match super::load(config) {
        Ok(c) => {
            print_summary(&c);
            for w in warnings(&c) {
                eprintln!("warning: {w}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

fn print_summary(c: &Config) {
    println!(
        "listen {}  store {}",
        c.server.listen,
        c.store.path.display()
    );
    println!("runnables:");
    for (name, r) in &c.runnables {
        let what = match (&r.command, &r.url) {
            (Some(cmd), _) => format!("command {}", cmd.join(" ")),
            (_, Some(url)) => format!("http POST {url}"),
            _ => "echo (returns its args)".into(),
        };
        let limit = r
            .concurrency
            .map(|n| format!(", concurrency {n}"))
            .unwrap_or_default();
        println!("  {name}: {what} (timeout {:?}{limit})", r.timeout);
    }
    println!("triggers:");
    for t in &c.triggers {
        let mode = t.mode().map(|m| format!(", {m:?}")).unwrap_or_default();
        let endpoint = t.endpoint();
        let pre = match &t.common.preprocessor {
            Some(p) if p.jq.is_some() => " jq",
            Some(_) => " command",
            None => "",
        };
        println!(
            "  {} [{}{}{}{}] {endpoint} -> {}",
            t.common.name,
            t.kind_label(),
            mode,
            pre,
            if t.common.enabled { "" } else { ", disabled" },
            t.common.runnable
        );
    }
}
