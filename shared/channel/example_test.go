package channel_test

import (
	"bytes"
	"fmt"

	"github.com/vmcred/vmcred/shared/channel"
)

// The agent opens every session with Magic and a CHALLENGE; the host
// reads them before it signs anything.
func ExampleConn_ReadChallenge() {
	var wire bytes.Buffer // a net.Conn in real use
	agent := channel.NewAgent(&wire)
	if err := agent.WriteChallenge(channel.Challenge{Nonce: [channel.ChallengeSize]byte{1}, Generation: 3, AgentVersion: "vmcred-guest dev"}); err != nil {
		fmt.Println(err)
		return
	}
	if err := channel.ReadMagic(&wire); err != nil {
		fmt.Println(err)
		return
	}
	c, err := channel.NewHost(&wire).ReadChallenge()
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("version %d, generation %d, agent %q\n", c.Version, c.Generation, c.AgentVersion)
	// Output: version 2, generation 3, agent "vmcred-guest dev"
}
