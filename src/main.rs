//! The `stratus` command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "stratus",
    version,
    about = "Stream processing for cloud cost and reliability intelligence"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a pipeline file and everything it names — schemas, SQL, sinks — without running
    /// it. Prints every error with file, line and a hint; exits non-zero if there is any.
    Validate {
        /// The pipeline file, e.g. pipelines/cloud-metrics.yaml.
        file: PathBuf,
    },
    /// Run the embedded default job: an in-process Kafka, generated cloud metrics,
    /// validation with a dead-letter topic, and a local Delta table, then a summary.
    Demo {
        /// How many events to generate.
        #[arg(long, default_value_t = 5_000)]
        events: usize,
        /// How many distinct resources emit them.
        #[arg(long, default_value_t = 50)]
        resources: usize,
        /// Seed of the generator: the same seed gives the same events.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Directory for the demo's Delta tables (its previous demo tables are replaced).
        #[arg(long, default_value = "demo-output")]
        out: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                // delta-kernel logs an ERROR when probing a table that does not exist yet,
                // which is how every new table starts.
                tracing_subscriber::EnvFilter::new("warn,buoyant_kernel::snapshot::builder=off")
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Validate { file } => {
            match runtime.block_on(stratus::pipeline::Pipeline::load(&file)) {
                Ok(p) => {
                    println!(
                        "{}: ok — pipeline `{}`: {} source(s), {} stage(s), {} sink(s)",
                        file.display(),
                        p.name,
                        p.sources.len(),
                        p.stages.len(),
                        p.sinks.len()
                    );
                    for stage in &p.stages {
                        let window = stage
                            .query
                            .window
                            .map_or("no window".to_string(), |w| w.to_string());
                        let columns: Vec<&str> = stage
                            .output_schema
                            .fields()
                            .iter()
                            .map(|f| f.name().as_str())
                            .collect();
                        println!("  stage {} ({window}) → {}", stage.name, columns.join(", "));
                    }
                }
                Err(diagnostics) => {
                    eprintln!("{diagnostics}");
                    eprintln!("{}: {} error(s)", file.display(), diagnostics.0.len());
                    std::process::exit(2);
                }
            }
        }
        Command::Demo {
            events,
            resources,
            seed,
            out,
        } => {
            let config = stratus::demo::DemoConfig {
                events,
                resources,
                seed,
                out_dir: out,
            };
            runtime.block_on(stratus::demo::run(&config))?;
        }
    }
    Ok(())
}
