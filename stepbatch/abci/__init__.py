"""stepbatch in consensus (SPEC §8): the ABCI 2.0 application of CometBFT (`app`), its socket server
(`server`), the genesis app_state and app hashes (`genesis`), the generated messages (`protos`) and
the local validator network (`localnet`)."""
