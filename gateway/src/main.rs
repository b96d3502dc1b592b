//! `chorus-gateway`: the HTTP gateway as a process. Its settings come from the environment
//! (see `gateway::settings`); it stops on Ctrl-C or SIGTERM, finishing the requests in hand.

fn main() -> std::process::ExitCode {
    host::main("chorus-gateway", || async {
        let settings = gateway::Settings::from_env()?;
        let gateway = gateway::Gateway::start(settings).await?;
        gateway.run(host::signal()).await
    })
}
