//! `kora-telemetry`: the command line of the local telemetry and upgrade-detection service.
//!
//! The binary is glue: it parses flags, layers and checks the settings, opens the store, and
//! runs the server or a query. Errors become a plain message on stderr and a non-zero exit
//! code.

use anyhow::Result;

use crate::cli::{Cli, Command, ThresholdsCommand};
use crate::config::{DataDir, Layered, load_thresholds};

mod analysis;
mod cli;
mod commands;
mod config;
mod demo;
mod offline;
mod print;
mod report;
mod serve;

/// jemalloc, with background threads that give freed memory back to the system a few seconds
/// after it is freed: after a burst of writes the service shrinks again instead of keeping its
/// peak (benches/README.md, "the soak").
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The allocator runs with the options `.cargo/config.toml` builds into it: two arenas, and
/// freed pages given back after a second (the soak's RSS after a burst; benches/README.md).
#[cfg(all(test, not(target_env = "msvc")))]
mod allocator_tests {
    #[test]
    fn jemalloc_runs_two_arenas_and_gives_freed_pages_back_within_a_second() {
        let conf = tikv_jemalloc_ctl::config::malloc_conf::read().unwrap();
        assert!(
            conf.contains("narenas:2") && conf.contains("dirty_decay_ms:1000"),
            "jemalloc was built with {conf:?}: .cargo/config.toml's JEMALLOC_SYS_WITH_MALLOC_CONF did not reach it"
        );
        assert!(conf.contains("background_thread:true"), "{conf:?}");
        // What it runs with (the environment's _RJEM_MALLOC_CONF would override it).
        assert_eq!(tikv_jemalloc_ctl::opt::narenas::read().unwrap(), 2);
        assert!(tikv_jemalloc_ctl::opt::background_thread::read().unwrap());
    }
}

/// Logs to stderr with `filter`, or with `KORA_TELEMETRY_LOG` when `filter` is `None`
/// (falling back to warnings only, so that the one-shot commands' output stays readable).
fn init_tracing(filter: Option<&str>) {
    let filter = match filter {
        Some(f) => tracing_subscriber::EnvFilter::try_new(f).ok(),
        None => tracing_subscriber::EnvFilter::try_from_env("KORA_TELEMETRY_LOG").ok(),
    }
    .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> std::process::ExitCode {
    let (cli, data_dir_source) = Cli::parse_with_sources();
    match run(cli, data_dir_source) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kora-telemetry: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli, data_dir_source: config::Source) -> Result<()> {
    let data_dir = DataDir::resolve(cli.data_dir, data_dir_source)?;
    if !matches!(cli.command, Command::Serve(_)) {
        init_tracing(None);
    }
    let dir = data_dir.path.as_path();
    match cli.command {
        Command::Serve(flags) => {
            // The service's settings (its log filter among them) are checked before it logs.
            let config = Layered::load(data_dir.clone(), &flags)?.validate()?;
            init_tracing(Some(&config.log));
            serve::serve(dir, config)
        }
        Command::Config { settings, json } => commands::config(data_dir, &settings, json),
        Command::Log { limit, kind, json } => commands::log(dir, limit, kind, json),
        Command::Profile { json } => offline::profile(dir, json),
        Command::Replay {
            from,
            to,
            thresholds,
            scenario,
            json,
        } => {
            let clean = match scenario {
                Some(path) => analysis::replay_scenario(&path)?,
                None => analysis::replay_log(
                    &data_dir.db(),
                    load_thresholds(thresholds.as_deref())?,
                    from,
                    to,
                    json,
                )?,
            };
            if !clean {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Backtest {
            thresholds,
            active,
            json,
        } => analysis::backtest(
            &data_dir.db(),
            load_thresholds(active.as_deref())?,
            load_thresholds(Some(&thresholds))?,
            json,
        ),
        Command::Thresholds(ThresholdsCommand::Check { file }) => {
            let t = load_thresholds(Some(&file))?;
            println!(
                "{}: valid, version {}, fingerprint {}",
                file.display(),
                t.version(),
                t.fingerprint()
            );
            Ok(())
        }
        Command::Thresholds(ThresholdsCommand::Show) => {
            print!("{}", kora_policy::EMBEDDED_THRESHOLDS);
            Ok(())
        }
        Command::Consent { state } => commands::consent(dir, &state),
        Command::Export {
            file,
            otlp,
            dry_run,
            preview,
        } => commands::export(dir, file, otlp, dry_run, preview),
        Command::Metrics { range, json } => commands::metrics(dir, &range, json),
        Command::Fit {
            model_required_vram_mb,
            context_tokens,
            json,
        } => offline::fit(dir, model_required_vram_mb, context_tokens, json),
        Command::Demo {
            duration,
            keep_data,
            listen,
        } => demo::run(demo::DemoOptions {
            duration,
            keep_data,
            listen,
        }),
    }
}
