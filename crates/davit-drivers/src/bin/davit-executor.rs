//! The executor of the exec driver as a standalone binary (tests and packaging); `davit executor` is the same.

fn main() {
    davit_drivers::executor::main()
}
