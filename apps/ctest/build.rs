fn main() {
    kiln_cc::compile("ctest", &["ctest.c"]);
}
