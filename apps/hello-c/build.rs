// The app's C sources, compiled for the kernel's CPU against musl.
fn main() {
    kiln_cc::compile("hello_c", &["main.c"]);
}
