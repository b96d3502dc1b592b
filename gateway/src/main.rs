//! `chorus-gateway`: the HTTP gateway as a process. Its settings come from the environment
//! (see `gateway::settings`); it stops on Ctrl-C or SIGTERM, finishing the requests in hand.

/// Handling messages and requests allocates for every header, field and payload: mimalloc
/// spends a fraction of the system allocator's time on it (see docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    host::main("chorus-gateway", || async {
        let settings = gateway::Settings::from_env()?;
        let gateway = gateway::Gateway::start(settings).await?;
        gateway.run(host::signal()).await
    })
}
