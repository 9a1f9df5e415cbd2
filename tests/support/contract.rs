//! `contract!`: one test per scenario and store, so every store is held to the same
//! contract. Each store gets a module of its own (`on_memory::a_scenario`, ...).
//!
//! ```ignore
//! contract!(
//!     [on_memory => super::memory(), on_redis => super::redis().await],
//!     [a_scenario, another_scenario],
//! );
//! ```
//! Each store expression is evaluated inside the generated test (so `.await` works) and
//! each scenario is an `async fn` of the test file taking what the expression returns.

macro_rules! contract {
    ([$($store:ident => $make:expr),* $(,)?], $scenarios:tt $(,)?) => {
        $( contract!(@store $store, $make, $scenarios); )*
    };
    (@store $store:ident, $make:expr, [$($scenario:ident),* $(,)?]) => {
        mod $store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario($make).await;
                }
            )*
        }
    };
}
