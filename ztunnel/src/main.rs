fn main() -> anyhow::Result<()> {
    ztunnel::cli::main()
}
