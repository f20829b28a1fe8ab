//! The `wsd` binary: parse, validate, log, serve; map failures to exit codes.

use std::process::ExitCode;

use wsd::cli::parse_args;
use wsd::config::Config;

fn main() -> ExitCode {
    let args: Vec<_> = std::env::args_os().collect();
    if args.len() == 1 {
        eprintln!("Command line arguments are missing.\nUsage: wsd [OPTIONS] COMMAND [ARGS]...   (see wsd --help)");
        return ExitCode::from(1);
    }
    let cli = match parse_args(args) {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            // One line naming the flag, as clap words it, without its multi-line hints.
            let text = e.to_string();
            eprintln!(
                "wsd: {}",
                text.lines()
                    .next()
                    .unwrap_or("invalid arguments")
                    .trim_start_matches("error: ")
            );
            return ExitCode::from(2);
        }
    };
    if cli.version {
        println!(
            "wsd {} (a drop-in replacement for websocketd 0.5.0)",
            env!("CARGO_PKG_VERSION")
        );
        return ExitCode::SUCCESS;
    }
    if cli.license {
        println!("wsd {}\n\n{}", env!("CARGO_PKG_VERSION"), wsd::LICENSE);
        return ExitCode::SUCCESS;
    }
    if let Some(shell) = cli.completions {
        wsd::cli::write_completions(shell, &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    // Before any thread starts, and before --passenv reads the environment: this unsets the
    // socket activation variables.
    wsd::systemd::claim_listen_fds();
    let config = match Config::from_cli(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("wsd: {e}");
            return ExitCode::from(e.exit_code as u8);
        }
    };
    wsd::log::init(config.log_level, config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wsd: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    wsd::child::leave_sigchld_to_the_workers();
    let result = runtime.block_on(wsd::server::run(config));
    // Sessions were already given their bounded teardown; nothing may hold up the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            wsd::fatal!("server", "{e}");
            ExitCode::from(3)
        }
    }
}
