//! The README's quickstart is this example's code, so it cannot rot: the
//! example compiles in CI, and this test fails when the two drift apart.

#[test]
fn the_readme_quickstart_is_this_example() {
    let readme = include_str!("../../../README.md");
    let main = include_str!("../src/main.rs");
    // The example less its opening doc comment.
    let code: String = main
        .lines()
        .skip_while(|l| l.starts_with("//!"))
        .skip_while(|l| l.is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    let block = format!("```rust\n{code}```\n");
    assert!(
        readme.contains(&block),
        "README.md's quickstart differs from examples/quickstart/src/main.rs; paste this in:\n{block}"
    );
}
