package sim

import (
	"encoding/xml"
	"fmt"
	"io"
	"strings"
	"time"
)

// Suite is one recipe's tests, for JUnit XML.
type Suite struct {
	Name string
	// Properties name what ran (the artifact's path and sha256, the board,
	// the simulator).
	Properties [][2]string
	Outcomes   []*Outcome
	// Error, if set, is why the suite could not run at all (the recipe did
	// not build, the board has no model).
	Error string
}

type junitSuites struct {
	XMLName  xml.Name     `xml:"testsuites"`
	Tests    int          `xml:"tests,attr"`
	Failures int          `xml:"failures,attr"`
	Errors   int          `xml:"errors,attr"`
	Suites   []junitSuite `xml:"testsuite"`
}

type junitSuite struct {
	Name       string          `xml:"name,attr"`
	Tests      int             `xml:"tests,attr"`
	Failures   int             `xml:"failures,attr"`
	Errors     int             `xml:"errors,attr"`
	Time       string          `xml:"time,attr"`
	Properties []junitProperty `xml:"properties>property,omitempty"`
	Cases      []junitCase     `xml:"testcase"`
}

type junitProperty struct {
	Name  string `xml:"name,attr"`
	Value string `xml:"value,attr"`
}

type junitCase struct {
	Name      string        `xml:"name,attr"`
	Classname string        `xml:"classname,attr"`
	Time      string        `xml:"time,attr"`
	Failure   *junitFailure `xml:"failure,omitempty"`
	Error     *junitFailure `xml:"error,omitempty"`
	SystemOut string        `xml:"system-out,omitempty"`
}

type junitFailure struct {
	Message string `xml:"message,attr"`
	Type    string `xml:"type,attr"`
	Text    string `xml:",chardata"`
}

func seconds(d time.Duration) string { return fmt.Sprintf("%.3f", d.Seconds()) }

// WriteJUnit writes the suites as JUnit XML (the testsuites/testsuite/
// testcase shape Jenkins, GitLab and GitHub test reporters read). A
// testcase's time is the wall-clock time of its run; its system-out is the
// UART output (bytes XML cannot hold become U+FFFD).
func WriteJUnit(w io.Writer, suites []Suite) error {
	var js junitSuites
	for _, s := range suites {
		su := junitSuite{Name: s.Name}
		for _, p := range s.Properties {
			su.Properties = append(su.Properties, junitProperty{Name: p[0], Value: p[1]})
		}
		var total time.Duration
		if s.Error != "" {
			su.Cases = append(su.Cases, junitCase{Name: "run", Classname: s.Name, Time: "0.000",
				Error: &junitFailure{Message: firstLine(s.Error), Type: "error", Text: s.Error}})
			su.Errors++
		}
		for _, o := range s.Outcomes {
			c := junitCase{Name: o.Name, Classname: s.Name}
			if o.Result != nil {
				c.Time = seconds(o.Result.Wall)
				c.SystemOut = string(o.Result.UART)
				total += o.Result.Wall
			}
			if !o.Passed() {
				text := strings.Join(o.Failures, "\n")
				c.Failure = &junitFailure{Message: firstLine(text), Type: "failure", Text: text}
				su.Failures++
			}
			su.Cases = append(su.Cases, c)
		}
		su.Tests = len(su.Cases)
		su.Time = seconds(total)
		js.Tests += su.Tests
		js.Failures += su.Failures
		js.Errors += su.Errors
		js.Suites = append(js.Suites, su)
	}
	if _, err := io.WriteString(w, xml.Header); err != nil {
		return err
	}
	enc := xml.NewEncoder(w)
	enc.Indent("", "  ")
	if err := enc.Encode(js); err != nil {
		return err
	}
	_, err := io.WriteString(w, "\n")
	return err
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}
