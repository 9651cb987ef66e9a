"""Services own transactions and talk to the store and the broker; routes hold no SQL."""
