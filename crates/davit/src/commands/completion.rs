//! `davit completion bash|zsh|fish|elvish|powershell`: a completion script generated from the grammar.

/// Prints the script for `shell` on stdout.
pub fn completion(shell: clap_complete::Shell) {
    clap_complete::generate(shell, &mut crate::cli::command(), "davit", &mut std::io::stdout());
}
