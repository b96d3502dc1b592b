//! A minimal aggregate for the runtime's tests: a balance that cannot go negative.

use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Deposited {
    pub amount: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Withdrawn {
    pub amount: u64,
}

events::event_enum! {
    /// Events of the test `account` aggregate.
    pub enum AccountEvent: "account" {
        Deposited = 1,
        Withdrawn = 1,
    }
}

#[derive(Debug, Clone)]
pub enum AccountCommand {
    Deposit(u64),
    Withdraw(u64),
    /// Deposits each amount as its own event.
    DepositEach(Vec<u64>),
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum AccountError {
    #[error("amount must be positive")]
    ZeroAmount,
    #[error("balance {balance} is below {amount}")]
    InsufficientFunds { balance: u64, amount: u64 },
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Account {
    pub balance: u64,
}

impl Aggregate for Account {
    const TYPE: &'static str = "account";
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;
    type Services = ();

    async fn handle(
        &mut self,
        command: AccountCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), AccountError> {
        let amounts = match command {
            AccountCommand::Withdraw(amount) => {
                if amount > self.balance {
                    return Err(AccountError::InsufficientFunds {
                        balance: self.balance,
                        amount,
                    });
                }
                sink.write(Withdrawn { amount }.into(), self).await;
                return Ok(());
            }
            AccountCommand::Deposit(amount) => vec![amount],
            AccountCommand::DepositEach(amounts) => amounts,
        };
        if amounts.contains(&0) {
            return Err(AccountError::ZeroAmount);
        }
        for amount in amounts {
            sink.write(Deposited { amount }.into(), self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: AccountEvent) {
        match event {
            AccountEvent::Deposited(e) => self.balance += e.amount,
            AccountEvent::Withdrawn(e) => self.balance -= e.amount,
        }
    }
}
