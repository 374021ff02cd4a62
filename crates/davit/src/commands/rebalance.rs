//! `davit rebalance`: waves of moves from the fullest nodes to the emptiest.

use davit_client::Client;

use super::{wait_migration, wait_running};
use crate::cli::RebalanceArgs;
use crate::output::short;
use crate::{Failure, flag_duration};

pub async fn rebalance(client: &Client, args: RebalanceArgs) -> Result<(), Failure> {
    let timeout = flag_duration("--timeout", &args.timeout)?;
    let mut moved = 0;
    for wave in 1..=args.max_waves {
        let request = davit_api::http::RebalanceRequest { max_moves: args.max_disruption, dry_run: args.dry_run };
        let answer = client.rebalance(&request).await?;
        if answer.moves.is_empty() && answer.refused == 0 {
            match moved {
                0 => println!("The cluster is balanced: no move narrows the load gap between two nodes."),
                _ => println!("Balanced after {moved} move(s)."),
            }
            return Ok(());
        }
        for change in &answer.moves {
            let verb = match (args.dry_run, change.live_migration) {
                (true, true) => "would live-migrate",
                (true, false) => "would move",
                (false, true) => "live-migrating",
                (false, false) => "moving",
            };
            println!(
                "wave {wave}: {verb} {} ({}) from {} (load {:.2} → {:.2}) to {} ({:.2} → {:.2})",
                change.name,
                short(&change.alloc_id),
                change.from_node,
                change.from_load.0,
                change.from_load.1,
                change.to_node,
                change.to_load.0,
                change.to_load.1
            );
        }
        if answer.moves.is_empty() {
            // Nothing moved, so the next wave would ask for the same moves at once.
            return Err(Failure::user(format!(
                "{} move(s) could not be made (the cluster changed meanwhile, or a live migration could not start: see the server's log); run it again later",
                answer.refused
            )));
        }
        if answer.refused > 0 {
            println!("wave {wave}: {} move(s) refused (the cluster changed meanwhile); the next wave tries again", answer.refused);
        }
        if args.dry_run || args.detach {
            return Ok(());
        }
        for change in &answer.moves {
            match change.live_migration {
                true => wait_migration(client, &change.replacement_id, timeout).await?,
                false => wait_running(client, &change.replacement_id, timeout).await?,
            }
        }
        moved += answer.moves.len();
    }
    println!("Stopped after {} waves ({moved} move(s)); run it again to go on.", args.max_waves);
    Ok(())
}
